"""The paper's Table 1 from the comparison files: errors, targets, and a table that cannot disagree with them."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis.table1 import (
    PAPER_TABLE1,
    comparison_document,
    read_comparisons,
    rollout_errors,
    write_comparison,
    write_table,
)

SIDE = 8.0


def brownian_3d(n=500, frames=30, dt=0.1, diffusion=0.5, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, SIDE, (n, 3))
    rows = []
    for f in range(frames):
        v = rng.normal(0, np.sqrt(2 * diffusion / dt), (n, 3))
        rows.append(pd.DataFrame({"frame": f, "t": f * dt, "particle": np.arange(n), "species": 0,
                                  "x": x[:, 0] % SIDE, "y": x[:, 1] % SIDE, "z": x[:, 2] % SIDE,
                                  "xu": x[:, 0], "yu": x[:, 1], "zu": x[:, 2],
                                  "vx": v[:, 0], "vy": v[:, 1], "vz": v[:, 2]}))
        x = x + v * dt
    return pd.concat(rows, ignore_index=True)


def test_a_statistical_twin_has_small_errors_and_a_faster_one_a_large_msd_error():
    truth = brownian_3d(seed=0)
    same = rollout_errors(truth, brownian_3d(seed=1), r_max=3.0, bins=15, lengths=(SIDE,) * 3)
    fast = rollout_errors(truth, brownian_3d(seed=1, diffusion=2.0), r_max=3.0, bins=15, lengths=(SIDE,) * 3)
    assert same["rdf"] < 0.1 and same["msd"] < 0.1
    assert fast["msd"] == pytest.approx(3.0, rel=0.15)  # four times the MSD: ||4r - r|| / ||r|| = 3
    assert fast["rdf"] < 0.1  # an ideal gas either way: the structure agrees


def test_one_frame_rollout_has_no_dynamics_errors():
    truth = brownian_3d(frames=5)
    errors = rollout_errors(truth, truth[truth["frame"] == 0], r_max=3.0, bins=10, lengths=(SIDE,) * 3)
    assert errors["msd"] is None and errors["vacf"] is None and errors["rdf"] is not None


def test_targets_compare_the_learned_model_with_the_paper_and_with_every_baseline():
    errors = {"learned": {"rdf": 0.015, "msd": 0.08, "vacf": 0.2},
              "dpd": {"rdf": 0.3, "msd": 0.05, "vacf": 0.5},
              "gns": None}
    doc = comparison_document("sp11", "SP11", errors)
    met, missed = set(doc["met"]), set(doc["missed"])
    assert "learned rdf at or below the paper's" in met
    assert "learned msd at or below the paper's" in missed  # 0.08 > 0.047
    assert "DPD rdf worse than the learned model" in met
    assert "DPD msd worse than the learned model" in missed  # 0.05 < 0.08: said, not hidden
    assert "GNS rdf worse than the learned model" in met  # no usable rollout counts as worse
    assert doc["models"]["gns"]["status"] == "missing"
    assert doc["paper"]["dpd"] == {"rdf": 0.23, "msd": 0.95, "vacf": None}
    with pytest.raises(ValueError, match="unknown model"):
        comparison_document("x", None, {"mystery": {}})


def test_a_learned_model_without_values_misses_its_targets():
    doc = comparison_document("sp51", "SP51", {"learned": None})
    assert doc["met"] == [] and len(doc["missed"]) == 2


def test_table_is_built_from_the_files(tmp_path):
    paths = []
    for name, case, learned in (("sp11", "SP11", 0.01), ("sp51", "SP51", 0.07)):
        doc = comparison_document(name, case, {"learned": {"rdf": learned, "msd": 0.04, "vacf": 0.1},
                                               "dpd": {"rdf": 0.2, "msd": 0.9, "vacf": 0.6}})
        paths.append(write_comparison(doc, tmp_path / name / "comparison.json"))
    # an edit to a file shows up in the table: nothing is typed in twice
    edited = json.loads(paths[1].read_text())
    edited["models"]["dpd"]["errors"]["rdf"] = 0.123
    paths[1].write_text(json.dumps(edited))
    table = write_table(read_comparisons(paths), tmp_path / "table1.md", tmp_path / "table1.csv")
    row = table[(table["experiment"] == "sp51") & (table["metric"] == "rdf")].iloc[0]
    assert row["DPD"] == 0.123 and row["DPD (paper)"] == PAPER_TABLE1["SP51"]["dpd"]["rdf"]
    assert row["Ours (paper)"] == 0.053
    assert pd.read_csv(tmp_path / "table1.csv").shape == table.shape
    markdown = (tmp_path / "table1.md").read_text()
    assert "| sp51 | SP51 | rdf | 0.07 |" in markdown and "sp51: missed: learned rdf at or below" in markdown


def test_unreadable_comparison_names_the_file(tmp_path):
    bad = tmp_path / "comparison.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="comparison.json"):
        read_comparisons([bad])


def test_twin_row_comes_from_the_box_metrics(tmp_path):
    from analysis.table1 import twin_comparison

    box = tmp_path / "box_metrics.json"
    box.write_text(json.dumps({"errors": {"truth": {"rollout": {"rdf": 0.017, "msd": 0.008, "vacf": 0.008}}}}))
    doc = twin_comparison("twin", box, tmp_path / "comparison.json")
    assert doc["case"] == "colloids" and doc["models"]["learned"]["errors"]["rdf"] == 0.017
    assert doc["met"] == ["learned rdf at or below the paper's"]  # 0.017 <= 0.115; no published MSD
    assert "not run" in doc["settings"]["baselines"]
    assert json.loads((tmp_path / "comparison.json").read_text())["experiment"] == "twin"
    box.write_text("{}")
    with pytest.raises(ValueError, match="rerun the twin's analysis"):
        twin_comparison("twin", box, tmp_path / "again.json")


def test_a_diverged_rollout_never_passes_on_its_partial_errors(tmp_path):
    errors = {"learned": {"rdf": 0.01, "msd": 0.01, "vacf": 0.01}, "gns": {"rdf": 0.001, "msd": 0.001, "vacf": 0.001}}
    doc = comparison_document("sp11", "SP11", errors, statuses={"learned": "completed", "gns": "diverged"})
    assert "GNS rdf worse than the learned model" in doc["met"]  # diverged: worse, whatever its partial errors
    doc = comparison_document("sp11", "SP11", errors, statuses={"learned": "diverged", "gns": "completed"})
    assert "learned rdf at or below the paper's" in doc["missed"]
    path = write_comparison(doc, tmp_path / "comparison.json")
    table = write_table(read_comparisons([path]), tmp_path / "t.md", tmp_path / "t.csv")
    assert set(table["Ours rollout"]) == {"diverged"}
    assert "the Ours rollout diverged" in (tmp_path / "t.md").read_text()


def test_sampling_floor_measures_the_truths_own_noise_and_flags_targets_below_it(tmp_path):
    """Halves of one Brownian sample: the floor shrinks like 1/sqrt(N); a published value below it is flagged."""
    from analysis.table1 import sampling_floor

    small = sampling_floor(brownian_3d(n=100, frames=40, seed=2), r_max=3.0, bins=15, n_lags=39, lengths=(SIDE,) * 3)
    large = sampling_floor(brownian_3d(n=1600, frames=40, seed=2), r_max=3.0, bins=15, n_lags=39,
                           lengths=(SIDE,) * 3)
    for metric in ("rdf", "msd", "vacf"):
        assert 0 < large[metric] < small[metric]
    assert large["msd"] == pytest.approx(small["msd"] / 4, rel=0.6)  # 16 times the particles: a quarter
    # the floor is the whole sample's noise: two independent samples of the same size differ by about
    # sqrt(2) times it
    errors = rollout_errors(brownian_3d(n=100, frames=40, seed=2), brownian_3d(n=100, frames=40, seed=3),
                            r_max=3.0, bins=15, lengths=(SIDE,) * 3)
    assert errors["msd"] == pytest.approx(np.sqrt(2) * small["msd"], rel=0.7)
    doc = comparison_document("sp11", "SP11", {"learned": {"rdf": 0.01, "msd": 0.2, "vacf": 0.1}},
                              floor={"rdf": 0.001, "msd": 0.05, "vacf": 0.1})
    flags = {c["metric"]: c["below_sampling_floor"] for c in doc["targets"] if c["model"] == "learned"}
    assert flags == {"rdf": False, "msd": True}  # 0.047 < sqrt(2) x 0.05; 0.02 > sqrt(2) x 0.001
    assert doc["sampling_floor"]["msd"] == 0.05 and "learned msd at or below the paper's" in doc["missed"]
    table = write_table([doc], tmp_path / "t.md", tmp_path / "t.csv")
    assert table.loc[table["metric"] == "msd", "truth sampling floor"].iloc[0] == 0.05
    assert "within the truth's sampling noise (below sqrt(2) x its floor" in (tmp_path / "t.md").read_text()
