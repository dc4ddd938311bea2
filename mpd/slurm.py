"""What a SLURM cluster offers, asked once on the submit host before any job is submitted (docs/cluster.md).

The workflow's ``onstart`` handler calls `prepare_submission` when Snakemake
runs with the SLURM executor (the profile ``workflow/profiles/slurm``):

* **CPUs.** Rules ask for up to 8 threads (``--cpus-per-task``); a job that
  asks more CPUs than any node of its partition has is accepted by ``sbatch``
  and then pends for ever (``PD (PartitionConfig)``). Unless the profile or
  the command line sets ``max-threads``, every rule's threads are capped at
  the CPUs of the largest node of the partition the jobs go to.
* **Accounts.** Where the cluster enforces accounts
  (``AccountingStorageEnforce`` contains ``associations``), a job without
  ``slurm_account`` is charged to the user's default account, and refused
  where the user has none: that case ends here with one message naming the
  profile key. A ``slurm_account`` on a cluster without accounting would be
  refused by the executor plugin's validation (``sacctmgr``), so that ends
  here too, with the fix.

The functions take the SLURM client's text output (``sinfo``, ``scontrol
show config``, ``sacctmgr``) through `run_client`, so that they are tested on
recorded outputs as well as on the local test cluster.
"""
from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Callable, Mapping

PROFILE = "workflow/profiles/slurm/config.yaml"
#: AccountingStorageEnforce options that imply ``associations`` (slurm.conf(5)).
ENFORCING = frozenset({"associations", "limits", "qos", "safe", "wckeys"})

Client = Callable[[list[str]], "str | None"]


class ClusterSetupError(ValueError):
    """The cluster refuses what the profile would submit; the message names the profile key and the fix."""


def run_client(args: list[str], timeout: float = 30) -> str | None:
    """A SLURM client's standard output; None when the client is missing, fails or hangs."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# ---------------------------------------------------------------------------
# Partitions and CPUs
# ---------------------------------------------------------------------------


def default_partition(run: Client = run_client) -> str | None:
    """The partition jobs without ``slurm_partition`` go to (``sinfo``'s name marked with ``*``)."""
    text = run(["sinfo", "--noheader", "--format=%P"])
    for name in (text or "").split():
        if name.endswith("*"):
            return name[:-1]
    return None


def node_cpus(partition: str | None = None, run: Client = run_client) -> list[int]:
    """CPUs of every node of `partition` (every partition when None), one entry per node."""
    args = ["sinfo", "--Node", "--noheader", "--format=%N %c"]
    if partition:
        args.append(f"--partition={partition}")
    cpus: dict[str, int] = {}
    for line in (run(args) or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            cpus[fields[0]] = int(fields[1])  # a node listed under several partitions counts once
    return list(cpus.values())


def thread_cap(partition: str | None = None, run: Client = run_client) -> tuple[int | None, str | None]:
    """(CPUs of the largest node, partition) that jobs without their own partition land on; (None, ..) unknown."""
    partition = partition or default_partition(run)
    cpus = node_cpus(partition, run)
    return (max(cpus) if cpus else None), partition


# ---------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``'s ``Key = value`` lines as a mapping."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def accounting(config: Mapping[str, str]) -> tuple[bool, bool]:
    """(accounting storage on, accounts enforced) from ``scontrol show config``."""
    storage = config.get("AccountingStorageType", "").strip().lower()
    has_storage = storage not in ("", "none", "(null)") and not storage.endswith("/none")
    enforce = {option.strip().lower() for option in config.get("AccountingStorageEnforce", "").split(",")}
    return has_storage, bool(enforce & ENFORCING)


def default_account(user: str | None = None, run: Client = run_client) -> str | None:
    """The user's default account in the accounting database (None: none, or no ``sacctmgr``)."""
    user = user or getpass.getuser()
    text = run(["sacctmgr", "--noheader", "--parsable2", "show", "user", user, "format=DefaultAccount"])
    names = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return names[0] if names else None


def check_account(account: str | None, run: Client = run_client, profile: str = PROFILE) -> str | None:
    """What the cluster makes of `account` (the profile's ``slurm_account``; None: not set).

    Returns a line for the log (None: nothing to say); raises
    ClusterSetupError where every job would be refused.
    """
    text = run(["scontrol", "show", "config"])
    if text is None:
        return None  # the submission itself will say what is wrong
    has_storage, enforced = accounting(parse_config(text))
    if account and not has_storage:
        raise ClusterSetupError(
            f"slurm_account: {account} is set ({profile}, default-resources), but this cluster has no job "
            "accounting (AccountingStorageType is none), so the executor plugin cannot validate an account and "
            "stops: remove slurm_account from the profile")
    if account or not enforced:
        return None
    found = default_account(run=run)
    if found:
        return (f"SLURM: jobs are charged to your default account {found}; set slurm_account under "
                f"default-resources in {profile} to use another")
    raise ClusterSetupError(
        "this cluster requires an account for every job (AccountingStorageEnforce includes associations) and "
        f"you have no default account: set slurm_account: <your account> under default-resources in {profile} "
        "(`sacctmgr show associations user=$USER format=account` lists yours)")


# ---------------------------------------------------------------------------
# The workflow's onstart handler
# ---------------------------------------------------------------------------


def raw_resources(args) -> dict[str, str]:
    """``name=value`` resource arguments (Snakemake's ``default_resources.args``) as strings, unquoted."""
    raw = {}
    for arg in args or ():
        name, sep, value = str(arg).partition("=")
        if sep:
            raw[name.strip()] = value.strip().strip("'\"")
    return raw


def prepare_submission(resource_settings, log: Callable[[str], None] = print, run: Client = run_client) -> None:
    """Cap rule threads at the largest node (unless ``max-threads`` is set) and check the account.

    resource_settings : Snakemake's ``workflow.resource_settings``; its
        ``max_threads`` is set here, before any job's threads are evaluated
        and before any job is submitted (the ``onstart`` handler).
    """
    defaults = raw_resources(getattr(resource_settings.default_resources, "args", None))
    if resource_settings.max_threads is None:
        cap, partition = thread_cap(defaults.get("slurm_partition"), run)
        if cap is None:
            log(f"SLURM: could not read the CPUs per node of partition {partition or '(default)'} with sinfo; "
                f"rules ask for up to their own threads (set max-threads in {PROFILE} to cap them)")
        else:
            resource_settings.max_threads = cap
            log(f"SLURM: rule threads capped at {cap} CPUs, the largest node of partition {partition} "
                f"(set max-threads in {PROFILE} to change)")
    message = check_account(defaults.get("slurm_account") or None, run)
    if message:
        log(message)
