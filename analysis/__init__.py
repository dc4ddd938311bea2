"""Statistics, figures and the report, measured the same way on experiment, truth and model.

Modules (docs/analysis.md): structure (g(r)), dynamics (MSD, VACF), affine
(removing the imposed shear), rearrangements (D2min), defects (Voronoi, 5-7
dislocations, psi6), cycle (shear phase), measure (all of it for one data
set), compare (relative L2 errors, outputs), figures, stage
(`analyse_experiment`, the workflow's entry point), synthetic (known-answer
configurations). The names below are imported on first use, so importing one
module does not load freud and matplotlib. Functions named like their module
(`compare.compare`, `measure.measure`, `defects.defects`,
`rearrangements.rearrangements`) are imported from the module.
"""
from importlib import import_module

_EXPORTS = {
    "rdf": "structure",
    "msd": "dynamics",
    "vacf": "dynamics",
    "nonaffine_msd": "dynamics",
    "nonaffine_vacf": "dynamics",
    "nonaffine_positions": "affine",
    "nonaffine_velocities": "affine",
    "d2min": "rearrangements",
    "frame_defects": "defects",
    "fit_cycle": "cycle",
    "Settings": "measure",
    "relative_l2": "compare",
    "analyse_experiment": "stage",
}

__all__ = [  # noqa: RUF022 - the order of _EXPORTS
    "rdf", "msd", "vacf", "nonaffine_msd", "nonaffine_vacf", "nonaffine_positions", "nonaffine_velocities",
    "d2min", "frame_defects", "fit_cycle", "Settings", "relative_l2", "analyse_experiment",
]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
