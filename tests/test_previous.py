"""Earlier results kept until their replacement is ready (mpd.previous) and named when a rule fails."""
import os
from pathlib import Path

import pytest

from mpd import errors, previous


def test_kept_path_mirrors_results_and_keeps_other_outputs_apart():
    store = Path("results/.previous")
    assert previous.kept_path("results/x/model/model.pt") == store / "x/model/model.pt"
    assert previous.kept_path("./results/x/../y/a.csv") == store / "y/a.csv"
    assert previous.kept_path("logs/x.log") == store / "_other/logs/x.log"
    assert previous.kept_path("/abs/model.pt") is None
    assert previous.kept_path("../elsewhere/model.pt") is None
    assert previous.kept_path("results/.previous/x/model.pt") is None


def test_kept_output_survives_its_deletion_until_the_next_success(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = Path("results/x/model/rollout.parquet")
    output.parent.mkdir(parents=True)
    output.write_bytes(b"first")
    kept = previous.keep([str(output)])
    assert kept == [Path("results/.previous/x/model/rollout.parquet")]
    assert kept[0].stat().st_ino == output.stat().st_ino  # a second name, not a copy

    output.unlink()  # what Snakemake does before rerunning the rule
    assert previous.kept_previous([str(output)]) == kept and kept[0].read_bytes() == b"first"

    output.write_bytes(b"second")  # the rerun succeeded
    previous.keep([str(output)])
    assert kept[0].read_bytes() == b"second"
    assert sorted(p.name for p in kept[0].parent.iterdir()) == ["rollout.parquet"]  # no temporary left


def test_without_hard_links_the_output_is_copied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = Path("results/x/a.json")
    output.parent.mkdir(parents=True)
    output.write_text("{}")

    def refuse(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    [kept] = previous.keep([str(output)])
    assert kept.read_text() == "{}" and kept.stat().st_ino != output.stat().st_ino


def test_folders_are_kept_file_by_file_and_missing_outputs_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("results/x/dataset")
    (folder / "shards").mkdir(parents=True)
    (folder / "metadata.json").write_text("{}")
    (folder / "shards" / "0.pt").write_bytes(b"0")
    kept = previous.keep([str(folder), "results/x/never_written.csv"])
    assert sorted(str(p) for p in kept) == ["results/.previous/x/dataset/metadata.json",
                                           "results/.previous/x/dataset/shards/0.pt"]


def test_describe_groups_the_kept_files_by_folder():
    kept = [Path("results/.previous/x/model/rollout.parquet"), Path("results/.previous/x/model/conservation.csv"),
            Path("results/.previous/x/analysis/metrics.json")]
    assert previous.describe(kept) == ("results/.previous/x/model/ (rollout.parquet, conservation.csv); "
                                       "results/.previous/x/analysis/ (metrics.json)")


def test_a_failure_names_the_kept_previous_results_in_its_record_and_log(tmp_path, capsys):
    log = tmp_path / "rule.log"
    records = tmp_path / "records"
    try:
        raise ValueError("broken")
    except ValueError as error:
        errors.report_failure(error, rule="rollout_model", log_file=log, records=records,
                              kept="results/.previous/x/model/ (rollout.parquet)")
    [record] = records.glob("*.txt")
    first, last = record.read_text().strip().splitlines()
    assert first == ("Error in rule rollout_model; traceback in " + str(log)
                     + "; its previous results are kept in results/.previous/x/model/ (rollout.parquet):")
    assert last.startswith("ValueError: broken")
    lines = log.read_text().strip().splitlines()
    assert lines[-1] == last and "kept in results/.previous/x/model/ (rollout.parquet)" in lines[-2]
    assert capsys.readouterr().err.strip().splitlines()[-1] == last


@pytest.mark.parametrize("outputs", [[], ["results/x/never.csv"]])
def test_nothing_kept_means_the_usual_record(tmp_path, monkeypatch, outputs):
    monkeypatch.chdir(tmp_path)
    assert previous.kept_previous(outputs) == [] and previous.describe([]) == ""
