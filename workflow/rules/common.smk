# Configuration checks and the helpers every rule file uses.
import json
import re
import sys

# The packages are importable without installation (and inside --use-conda envs).
sys.path.insert(0, workflow.basedir)

from mpd import errors
from mpd.config import ConfigError, validate_config

try:
    validate_config(config)
except ConfigError as error:
    # One clear message, before any job runs and before any output is touched: the last
    # line of the console, without Snakemake's traceback lines unless MPD_DEBUG is set.
    if errors.debug():
        raise WorkflowError(str(error)) from None
    print(errors.one_line(error), file=sys.stderr, flush=True)
    raise SystemExit(1)


onstart:
    errors.clear_records()
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        # Before any job's threads are evaluated or submitted: cap them at the largest node, check the account.
        from snakemake.logging import logger as snakemake_logger

        from mpd.slurm import ClusterSetupError, prepare_submission

        try:
            prepare_submission(workflow.resource_settings, log=snakemake_logger.info)
        except ClusterSetupError as error:
            print(errors.one_line(error), file=sys.stderr, flush=True)
            raise SystemExit(1)


onerror:
    # A rule that failed with a clear error (mpd.errors) ends the output with its message.
    errors.finish_with_clear_errors(snakemake_log=log)

EXPERIMENTS = list(config["experiments"])
# Filmed experiments: digital twins of a colloid monolayer (SYNTHETIC) and real recordings (VIDEOS);
# simulated bulk samples without a camera (BULK: star-polymer melts), compared model by model (comparison.smk).
BULK = [name for name in EXPERIMENTS if "star_polymer" in (config["experiments"][name].get("synthetic") or {})]
SYNTHETIC = [name for name in EXPERIMENTS if "synthetic" in config["experiments"][name] and name not in BULK]
VIDEOS = [name for name in EXPERIMENTS if "video" in config["experiments"][name]]
FILMED = SYNTHETIC + VIDEOS
# Bulk experiments whose learned model is also rolled out in LAMMPS on a large tiled sample (lammps.smk), and
# digital twins whose model is rolled out there on a tiled copy of their sheared box.
LAMMPS = [name for name in BULK if "lammps" in config["experiments"][name]]
LAMMPS_TWINS = [name for name in SYNTHETIC if "lammps" in config["experiments"][name]]


def experiment_pattern(names):
    """A wildcard constraint matching exactly these experiment names (none: matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def experiment_section(experiment, *keys):
    """A nested section of one experiment's config ({} where absent), for rule params.

    Passing the section as a param makes Snakemake rerun the rule, and only
    that experiment's rules, when the section changes.
    """
    section = config["experiments"][experiment]
    for key in keys:
        section = section.get(key) or {}
    return section


def all_outputs():
    outputs = []
    for name in FILMED:
        outputs.append(f"results/{name}/tracking/trajectories.parquet")
        outputs.append(f"results/{name}/analysis/metrics.json")
        if name in SYNTHETIC:
            outputs.append(f"results/{name}/tracking/accuracy.json")
    if BULK or SYNTHETIC:
        outputs += ["results/table1.md", "results/table1.csv"]
    for name in LAMMPS + LAMMPS_TWINS:
        outputs += [f"results/{name}/lammps/{file}" for file in ("trajectories.parquet", "trajectory.dump")]
        outputs.append(f"results/{name}/lammps/status.json")
    return outputs


# The comparison settings each rule depends on: a rule reruns only when one of its own changes
# (adding a baseline to `models` reruns that baseline and the comparison, not the learned model).
SPLIT_KEYS = ("train_frames", "rollout_factor", "seed")


def comparison_section(experiment, keys=None):
    """The experiment's `comparison:` settings over their defaults (mpd.horizon.comparison_settings),
    only `keys` of them when given."""
    from mpd.horizon import comparison_settings

    star = (config["experiments"][experiment].get("synthetic") or {}).get("star_polymer") or {}
    settings = comparison_settings(config["experiments"][experiment].get("comparison"), star.get("preset", "SP11"))
    return settings if keys is None else {key: settings[key] for key in keys}


def comparison_inputs(wildcards):
    """The truth and each compared model's rollout and status (compare_models)."""
    inputs = {"trajectories": f"results/{wildcards.experiment}/truth/trajectories.parquet",
              "metadata": f"results/{wildcards.experiment}/truth/metadata.json"}
    for model in comparison_section(wildcards.experiment)["models"]:
        folder = f"results/{wildcards.experiment}/" + ("model" if model == "learned" else f"baselines/{model}")
        inputs[f"{model}_rollout"] = f"{folder}/rollout.parquet"
        inputs[f"{model}_status"] = f"{folder}/rollout_status.json"
    return inputs


def video_files(experiment):
    """The input files of a real recording (a file, the images of a folder, or every file its glob matches)."""
    from mpd.config import video_input_files

    return video_input_files(
        config["experiments"][experiment]["video"]["path"], key=f"experiments.{experiment}.video.path"
    )


def shear_period_s(experiment):
    """The imposed shear period (s) when known: the twin's, or video.shear_period_s; else None."""
    section = config["experiments"][experiment]
    if "synthetic" in section:
        from twin.params import SimulationParams, from_dict

        return from_dict(SimulationParams, section["synthetic"].get("simulation"), "simulation").shear.period_s
    return section["video"].get("shear_period_s")


ANALYSIS_FIGURES = ["rdf", "msd", "vacf", "d2min_distribution", "nn_distance", "d2min_map", "defect_map", "cycle"]
# tracking.qc.write_figures writes these into results/{exp}/tracking/qc/
QC_FIGURES = ["annotated_frame", "mass_size", "subpixel_bias", "trajectories", "features_per_frame"]


def qc_report_figures():
    # (one line: Snakemake's parser takes a line that starts with `report` for its directive)
    return [report(f"results/{{experiment}}/tracking/qc/{name}.png", caption=f"../report/qc_{name}.rst", category="{experiment}", subcategory="tracking QC") for name in QC_FIGURES]  # noqa: E501
