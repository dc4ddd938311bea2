"""A real one-node SLURM cluster on localhost for the cluster tests (docs/cluster.md).

`slurm_cluster` starts munged, slurmctld and slurmd in the foreground from a
temporary directory (its own munge key and socket, its own slurm.conf named by
SLURM_CONF, free ports), waits for the node to be idle, and stops the daemons
by their process ids at teardown. `missing()` says why the tests must skip
(never fail) where slurm-wlm, munge or snakemake-executor-plugin-slurm are not
installed, or when not root.
"""
import importlib.util
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "sbatch", "srun", "scancel", "scontrol")


def missing() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    absent = [b for b in DAEMONS + CLIENTS
              if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"SLURM/munge binaries not installed ({', '.join(absent)}): apt-get install slurm-wlm munge"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node cluster; yields the environment (SLURM_CONF) for its clients."""
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("spool", "state", "log", "munge"):
        (root / sub).mkdir()
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory = max(1024, int(_memory_mb() * 0.8))
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=pytest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'ctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        # squeue must still see finished jobs when the plugin asks (>= 3 x init interval), and when a test
        # checks every job of a run at its end: the demo takes 6-7 min on a loaded 2-core machine, and with
        # slurmctld's default of 300 s its first jobs were gone from squeue by then
        "MinJobAge=3600",
        # job ids of their own: MPI (PMI2, UCX shared memory) keys its start-up by job and step id, so two test
        # clusters on one host (two test sessions at once) that both run job 1 would cross-talk, and a job id met
        # again finds the shared-memory names a crashed earlier job left in /dev/shm. From the OS's entropy: the
        # module-level `random` is seeded by other tests, which made every session start at the same id.
        f"FirstJobId={random.SystemRandom().randrange(1_000, 50_000_000)}",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    # snakemake-executor-plugin-slurm-jobstep (0.6.1) drops every SLURM_* variable, SLURM_CONF
    # included, before it runs the job's command; on a real cluster slurm.conf sits at the default
    # path. Here the clients first on PATH (PATH is kept) name this cluster's slurm.conf again.
    wrappers = root / "bin"
    wrappers.mkdir()
    for client in CLIENTS:
        wrapper = wrappers / client
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec "{shutil.which(client)}" "$@"\n')
        wrapper.chmod(0o755)
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{wrappers}{os.pathsep}{os.environ.get('PATH', '')}")
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args):
        log = open(root / "log" / f"{Path(args[0]).name}.out", "w")  # noqa: SIM115 (open for the daemon's life, closed at teardown)
        logs.append(log)
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def diagnostics() -> str:
        text = []
        for f in sorted((root / "log").iterdir()):
            text.append(f"== {f.name}\n" + f.read_text(errors="replace")[-1500:])
        return "\n".join(text)

    try:
        start([_binary("munged"), "--foreground", "--force", f"--key-file={key}",
               f"--socket={munge_socket}", f"--pid-file={root / 'munge' / 'munged.pid'}",
               f"--seed-file={root / 'munge' / 'munge.seed'}", f"--log-file={root / 'log' / 'munged.log'}"])
        deadline = time.monotonic() + 20
        while not munge_socket.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("munged did not start\n" + diagnostics())
            time.sleep(0.2)
        start([_binary("slurmctld"), "-D", "-i", "-f", str(conf)])
        time.sleep(1)
        start([_binary("slurmd"), "-D", "-f", str(conf)])
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                pytest.fail("a SLURM daemon exited\n" + diagnostics())
            out = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%t"], check=False, env=env,
                                 capture_output=True, text=True, timeout=10)
            state = out.stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"node not idle after 60 s (state {state!r})\n" + diagnostics())
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=20,
                       check=False)
        for proc in reversed(procs):  # slurmd, slurmctld, then munged: by pid only
            _stop(proc)
        for log in logs:
            log.close()
