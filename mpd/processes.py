"""Run a group of worker processes (MPI or torchrun ranks) from a rule's script: their output into the log.

Plumbing shared by the launchers (`mpd.distributed.launch`, `mpd.lammps_rollout`): the ranks' combined
output goes to this process's log line by line, the last lines are kept for the error message, and an
interruption (a signal, KeyboardInterrupt) stops the ranks too instead of leaving them running.
"""
from __future__ import annotations

import logging
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence


def run_logged(command: Sequence[str], env: Mapping[str, str], log: logging.Logger,
               tail_lines: int) -> tuple[int, list[str]]:
    """(exit status, the output's last `tail_lines` lines) of `command`; -1 when it cannot start."""
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        proc = subprocess.Popen(list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
    except OSError as error:
        return -1, [f"cannot start {command[0]}: {error}"]
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("| %s", line)
        return proc.wait(), list(tail)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
