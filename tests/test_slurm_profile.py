"""The SLURM profile and the submit-side checks (mpd.slurm) without a cluster: recorded client outputs and the
sbatch lines the executor plugin builds from the workflow's resources (docs/cluster.md)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mpd import slurm
from mpd.slurm import ClusterSetupError

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
needs_plugin = pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                                  reason="snakemake-executor-plugin-slurm is not installed")

SINFO_PARTITIONS = "gpu\nmain*\nbig\n"
SINFO_NODES = {  # per partition; a node may sit in several
    None: "n1 2\nn2 2\ng1 16\nb1 64\n",
    "main": "n1 2\nn2 2\n",
    "gpu": "g1 16\n",
    "big": "b1 64\nn1 2\n",
}
CONFIG_NO_ACCOUNTING = "AccountingStorageEnforce = none\nAccountingStorageType   = (null)\nMinJobAge = 300 sec\n"
CONFIG_ENFORCED = ("AccountingStorageEnforce = associations,limits,qos\n"
                   "AccountingStorageType   = accounting_storage/slurmdbd\n")
CONFIG_ACCOUNTING_OPEN = "AccountingStorageEnforce = none\nAccountingStorageType = accounting_storage/slurmdbd\n"


def fake_cluster(config=CONFIG_NO_ACCOUNTING, default_account=""):
    calls = []

    def run(args):
        calls.append(args)
        if args[0] == "sinfo" and "--format=%P" in args:
            return SINFO_PARTITIONS
        if args[0] == "sinfo":
            partition = next((a.split("=", 1)[1] for a in args if a.startswith("--partition=")), None)
            return SINFO_NODES[partition]
        if args[:3] == ["scontrol", "show", "config"]:
            return config
        if args[0] == "sacctmgr":
            return default_account
        raise AssertionError(args)

    run.calls = calls
    return run


def settings(max_threads=None, args=()):
    return SimpleNamespace(max_threads=max_threads, default_resources=SimpleNamespace(args=list(args)))


def test_threads_are_capped_at_the_largest_node_of_the_default_partition():
    assert slurm.thread_cap(run=fake_cluster()) == (2, "main")
    assert slurm.thread_cap("big", run=fake_cluster()) == (64, "big")
    lines = []
    resources = settings()
    slurm.prepare_submission(resources, log=lines.append, run=fake_cluster())
    assert resources.max_threads == 2
    assert "capped at 2 CPUs" in lines[0] and "partition main" in lines[0]


def test_the_profiles_partition_and_an_explicit_max_threads_are_respected():
    resources = settings(args=["tmpdir=system_tmpdir", "slurm_partition='gpu'"])
    slurm.prepare_submission(resources, log=lambda line: None, run=fake_cluster())
    assert resources.max_threads == 16
    explicit = settings(max_threads=4)
    run = fake_cluster()
    slurm.prepare_submission(explicit, log=lambda line: None, run=run)
    assert explicit.max_threads == 4 and not [c for c in run.calls if c[0] == "sinfo"]


def test_unknown_cpus_leave_the_threads_alone_and_say_so():
    resources = settings()
    lines = []
    slurm.prepare_submission(resources, log=lines.append, run=lambda args: None)
    assert resources.max_threads is None and "could not read the CPUs" in lines[0] and "max-threads" in lines[0]


def test_accounts():
    # no accounting: nothing to say without an account, a clear stop with one (the plugin could not validate it)
    assert slurm.check_account(None, fake_cluster()) is None
    with pytest.raises(ClusterSetupError, match=r"remove slurm_account.*") as error:
        slurm.check_account("myproject", fake_cluster())
    assert "workflow/profiles/slurm/config.yaml" in str(error.value)
    # accounting without enforcement, or an account given: the plugin's own validation takes over
    assert slurm.check_account(None, fake_cluster(CONFIG_ACCOUNTING_OPEN)) is None
    assert slurm.check_account("myproject", fake_cluster(CONFIG_ENFORCED)) is None
    # enforced: the default account is used and named; without one, stop with the key to set
    note = slurm.check_account(None, fake_cluster(CONFIG_ENFORCED, default_account="physics\n"))
    assert "default account physics" in note and "slurm_account" in note
    with pytest.raises(ClusterSetupError, match="requires an account.*slurm_account: <your account>"):
        slurm.check_account(None, fake_cluster(CONFIG_ENFORCED))
    # an unreadable configuration leaves the decision to sbatch
    assert slurm.check_account("myproject", lambda args: None) is None


def test_a_clear_error_for_the_console():
    from mpd import errors

    assert errors.is_clear(ClusterSetupError("x"))


def dry_run_resources(tmp_path, *args) -> dict[str, str]:
    """train_model's resources as Snakemake resolves them with the profile (a dry run: no cluster)."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"experiments": {"tiny": {"synthetic": {}}}}))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "-d",
                           str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--profile", str(PROFILE),
                           "results/tiny/model/model.pt", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    block = done.stdout[done.stdout.index("rule train_model:"):]
    line = re.search(r"resources: (.*)", block).group(1)
    return dict(item.split("=", 1) for item in line.split(", "))


class Resources(dict):
    __getattr__ = dict.get


def sbatch_line(resources: dict, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    typed = Resources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=typed, threads=threads)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "train_model", "account": "",
              "partition": "", "workdir": "."}
    return get_submit_command(job, params) + set_gres_string(job)


@needs_plugin
def test_the_profile_asks_for_a_gpu_only_when_switched_on(tmp_path):
    shipped = dry_run_resources(tmp_path)
    assert shipped["gpu"] == "0" and shipped["mem_mb"] == "8000" and shipped["runtime"] == "240"
    line = sbatch_line(shipped, threads=2)
    assert "--gpus" not in line and "--gres" not in line and "--cpus-per-task=2" in line and "-t 240" in line
    switched = dry_run_resources(tmp_path, "--set-resources", "train_model:gpu=1")
    assert switched["mem_mb"] == "8000"  # the rule's own values stay: the override adds to them
    line = sbatch_line(switched, threads=2)
    assert "--gpus=1" in line and "--mem 8000" in line


def test_the_profile_names_only_rules_that_exist():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    rules = {name for smk in (REPO / "workflow" / "rules").glob("*.smk")
             for m in re.findall(r"^(?:rule (\w+):|use rule \w+ as (\w+))", smk.read_text(), re.MULTILINE)
             for name in m if name}
    named = set(profile.get("set-resources") or {}) | set(profile.get("set-threads") or {})
    assert named and named <= rules, named - rules
