"""What every rule's script does first (workflow/scripts/_repo.start_rule): thread limits for torch, BLAS and
OpenMP, and failures that land in the rule's log file with their traceback, one line on the console."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"


def run_python(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "MPD_DEBUG"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**environment, **(env or {})})


def fake_rule(threads: int, log: Path | None) -> str:
    """Python that builds the object Snakemake injects into a script, for start_rule."""
    return f"""
        import sys, types
        sys.path.insert(0, {str(SCRIPTS)!r})
        snakemake = types.SimpleNamespace(threads={threads}, rule="some_rule", log={[str(log)] if log else []!r})
        import _repo
    """


def test_start_rule_limits_torch_blas_and_openmp_to_the_rules_threads(tmp_path):
    code = fake_rule(1, tmp_path / "rule.log") + """
        import json, os
        import numpy, scipy.linalg, torch
        from threadpoolctl import threadpool_info
        log = _repo.start_rule(snakemake)
        numpy.linalg.inv(numpy.eye(300) + 0.1)  # the BLAS pools are in use
        pools = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
        print(json.dumps({"torch": torch.get_num_threads(), "pools": pools,
                          "env": {k: v for k, v in os.environ.items() if k.endswith("NUM_THREADS")}}))
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["torch"] == 1
    assert seen["pools"] and all(n == 1 for _, n in seen["pools"]), seen["pools"]
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and seen["env"]["OPENBLAS_NUM_THREADS"] == "1"


def test_without_the_limit_the_libraries_would_take_more_threads(tmp_path):
    """The test above has teeth only where a library's default is above one thread: check it is (skip otherwise)."""
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every library's default is already one thread")
    result = run_python("import torch; print(torch.get_num_threads())", tmp_path)
    assert int(result.stdout.strip()) > 1


def test_limit_threads_refuses_a_non_positive_count():
    from mpd.threads import limit_threads

    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="positive integer"):
            limit_threads(bad)


def test_every_rule_script_starts_with_start_rule():
    scripts = [p for p in SCRIPTS.glob("*.py") if p.name != "_repo.py"]
    assert scripts
    for path in scripts:
        text = path.read_text()
        assert "_repo.start_rule(snakemake" in text, f"{path.name} does not call _repo.start_rule"
        assert "set_num_threads" not in text, f"{path.name} sets torch's threads itself"
        # The last statement: outputs are kept (mpd.previous) only once every one of them is written.
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        assert last.startswith("_repo.finish_rule(snakemake)"), f"{path.name} does not end with _repo.finish_rule"


def test_a_bug_in_a_rule_leaves_its_traceback_in_the_log_and_one_line_on_the_console(tmp_path):
    log_file = tmp_path / "logs" / "rule.log"
    log_file.parent.mkdir()
    code = fake_rule(1, log_file) + """
        log = _repo.start_rule(snakemake)
        log.info("working")
        def compute():
            return {}["missing key"]
        compute()
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("KeyError: 'missing key'") and "a bug" in last and str(log_file) in last
    assert "Traceback" not in result.stderr
    text = log_file.read_text()
    assert "working" in text and "Traceback (most recent call last)" in text and "in compute" in text


def test_a_bug_without_a_log_file_keeps_its_traceback_on_the_console(tmp_path):
    code = fake_rule(1, None) + """
        _repo.start_rule(snakemake)
        1 / 0
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ZeroDivisionError" in result.stderr
