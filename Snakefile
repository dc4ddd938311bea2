# Microscopy of a colloidal monolayer -> trajectories -> geometry -> learned
# metriplectic model -> rollouts -> analysis. Rules are thin: each calls one
# function of the packages mpd/, tracking/, analysis/ or twin/.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/twin.smk"
include: "workflow/rules/video.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/comparison.smk"
include: "workflow/rules/lammps.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
