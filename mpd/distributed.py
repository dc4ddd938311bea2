"""Data-parallel training with torch.distributed (torchrun): gloo on CPU, NCCL on GPU (docs/training.md).

    torchrun --standalone --nproc_per_node=N -m mpd.distributed DATASET_DIR OUT_DIR [--config model.yaml]

The workflow's train_model rule with ``tasks: K`` (K > 1) starts the K
processes with `launch`: inside a SLURM job one torchrun agent per SLURM task
(``srun``, c10d rendezvous on the job's first node, so the tasks may span
nodes), elsewhere ``torchrun --standalone`` on this machine.

Every rank builds the same model from the same seed, iterates the same seeded
shuffle of the training split and takes the disjoint shard
``global_batch[rank::world_size]`` of each global batch, so the global batch
is the one of a 1-process run with the same ``batch_size``. The loss of a
shard is weighted by its interior particles and the gradients are summed over
the ranks (explicit all-reduce after backward, no DDP hooks: the model's
forward itself calls autograd.grad), which gives the gradient of the
1-process loss (mean NLL over the global batch's interior particles) up to
summation order. The likelihood's covariance floor (`covariance_floor`) takes its
small batch-mean part over the global batch. Rank 0 alone
evaluates, selects and writes checkpoint.pt, training_log.csv and the model
files; the evaluation results are broadcast so that every rank holds the same log.

Exact up to summation order for fluid and solid models alike (the strain
solve has no batch-dependent regulariser; the floor's small batch-mean part
uses the global batch).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mpd.model import MetriplecticModel, State
from mpd.model.dynamics import gaussian_nll, row_scales

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the process group (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """The initialised default process group's rank and size; Context() when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str | None = None) -> tuple[Context, str | None]:
    """Initialise the default process group from torchrun's environment (no-op when not launched by it).

    Backend: NCCL when the device is CUDA (each rank on cuda:LOCAL_RANK), gloo
    otherwise. Returns the context and the device string to train on.
    """
    if not launched_by_torchrun():
        return Context(), device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
    if cuda:
        index = local_device_index(torch.cuda.device_count())
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return context(), device if cuda else (device if device not in (None, "auto") else "cpu")


def local_device_index(visible: int, environ: Mapping[str, str] | None = None) -> int:
    """This rank's CUDA device among the `visible` ones.

    One GPU visible (``srun --gpus-per-task=1`` binds one to each task): that one. Otherwise the rank's
    place among the ranks of its node: ``LOCAL_RANK`` of torchrun's ``--nproc-per-node`` ranks, after
    those of the SLURM tasks before it on the node (``SLURM_LOCALID``; `launch` starts one torchrun agent
    per SLURM task, so each agent's only rank has LOCAL_RANK 0).
    """
    environ = os.environ if environ is None else environ
    if visible <= 1:
        return 0
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    per_agent = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    index = int(environ.get("SLURM_LOCALID", "0")) * per_agent + local_rank
    if index >= visible:
        raise RuntimeError(f"rank {environ.get('RANK')} is local process {index} of its node, which has only "
                           f"{visible} GPUs visible: give each process its own GPU")
    return index


def shard(indices: Sequence[int], ctx: Context) -> list[int]:
    """This rank's disjoint part of a global batch: every world_size-th item from its rank."""
    return list(indices)[ctx.rank::ctx.world_size]


def all_sum(values: Sequence[float], device, dtype=torch.float64) -> list[float]:
    """Sum of a few scalars over the ranks (float64)."""
    tensor = torch.tensor([float(v) for v in values], dtype=dtype, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def differentiable_all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over the ranks that backpropagates (the gradient is summed over the ranks too)."""
    from torch.distributed.nn.functional import all_reduce

    # deprecated for _functional_collectives.all_reduce, which has no autograd formula (torch 2.13)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce is deprecated", FutureWarning)
        return all_reduce(tensor, op=dist.ReduceOp.SUM)


def broadcast_floats(values: Sequence[float], device) -> list[float]:
    """Rank 0's values on every rank."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sum every parameter's .grad over the ranks, in one flat buffer.

    A gradient missing on a rank counts as zero; a parameter without a
    gradient on every rank keeps .grad = None (as in a 1-process run, so Adam
    skips it).
    """
    parameters = list(parameters)
    if not parameters:
        return
    ref = parameters[0]
    flags = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float64, device=ref.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters])
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, flag in zip(parameters, flags.tolist()):
        n = p.numel()
        if flag > 0:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        else:
            p.grad = None
        offset += n


def sharded_nll_sum(
    model: MetriplecticModel, state_t: State, state_t1: State, pairs, dt: float, interior: torch.Tensor,
    jitter: float, device, flow: torch.Tensor | None = None, observation_variance: float = 0.0,
    label_variance: float = 0.0,
) -> torch.Tensor:
    """Sum over this shard's interior particles of -log N((v_i, S_i)^{t+1}; mu_i, Sigma_ii).

    `MetriplecticModel.nll` times the number of interior particles, except
    that the small batch-mean part of the detached covariance floor
    (`mpd.model.dynamics.covariance_floor`) takes the mean over the global batch (all ranks; a collective: every rank calls
    this once per step, an empty shard with `state_t` None).
    """
    if state_t is None:
        all_sum([0.0] * 3, device)  # the velocity and entropy scale sums and the row count of the floor
        return None
    residual, covariance = model.predictive_moments(state_t, state_t1, pairs, dt, interior, flow, observation_variance,
                                                    label_variance)
    scales = row_scales(covariance, covariance.shape[-1] - 1).detach()
    sums = all_sum(scales.sum(0).tolist() + [scales.shape[0]], device)
    global_mean = torch.tensor(sums[:-1], dtype=scales.dtype, device=scales.device) / sums[-1]
    return gaussian_nll(residual, covariance, jitter, scale_mean=global_mean).sum()


# ---------------------------------------------------------------------------
# Command line: the train_model stage under torchrun
# ---------------------------------------------------------------------------


def read_model_section(path) -> dict | None:
    """The ``model:`` section of a YAML/JSON file (the whole file when it has no top-level ``model`` key)."""
    if path is None:
        return None
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    data = data or {}
    return data.get("model", data) if isinstance(data, dict) else data


def _record(function):
    """torch.distributed.elastic's `record`: a failing rank's traceback reaches torchrun's summary."""
    try:
        from torch.distributed.elastic.multiprocessing.errors import record
    except ImportError:  # pragma: no cover (torch without elastic)
        return function
    return record(function)


@_record
def main(argv: Sequence[str] | None = None) -> int:
    """Train (data-parallel when launched by torchrun) and write model.pt, rollout_step.pt, training_log.csv."""
    parser = argparse.ArgumentParser(prog="python -m mpd.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", help="the geometry stage's output (or its dataset/ folder)")
    parser.add_argument("out_dir", help="model folder: checkpoint.pt, training_log.csv, model.pt, rollout_step.pt")
    parser.add_argument("--config", help="YAML/JSON file with the model: section (or the section itself)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: model.training.device)")
    parser.add_argument("--threads", type=int, default=None, help="threads of computation of each rank")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoint.pt matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from mpd.stage import effective_model_config, write_model_files
    from mpd.training import train

    if args.threads is not None:
        from mpd.threads import limit_threads

        limit_threads(args.threads)
    # the configuration a 1-process training of this dataset uses (closed-box defaults included)
    config = effective_model_config(read_model_section(args.config), args.dataset_dir)
    device = args.device if args.device is not None else config.training.device
    ctx, device = init_from_env(device)
    try:
        out_dir = Path(args.out_dir)
        result = train(args.dataset_dir, out_dir, config, device=device, resume=not args.no_resume)
        if ctx.is_main:
            write_model_files(result, config, args.dataset_dir, out_dir, world_size=ctx.world_size)
        if ctx.active:
            dist.barrier()
    finally:
        if ctx.active and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------
# Launcher: the train_model rule with several tasks
# ---------------------------------------------------------------------------

#: The repository root: the packages are imported from the source tree (no installation), also by the ranks.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The effective model section, for the ranks (`launch` writes it into the output folder and removes it).
CONFIG_NAME = ".distributed-config.json"
#: The model files rank 0 writes last; a failed launch leaves none of them (training_log.csv and
#: checkpoint.pt, written every epoch, stay: the log for a look, the checkpoint to resume from).
MODEL_FILES = ("model.pt", "rollout_step.pt")
#: Lines of the ranks' output an error message quotes (all of it goes to the log).
TAIL_LINES = 40


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in, as `scontrol show job` describes it."""

    job_id: str
    nodes: tuple[str, ...]  # host names, the first one first
    gpus: int = 0           # GPUs allocated to the job (gres/gpu in its TRES)


def _client(args: list[str]) -> str:
    """A SLURM client's standard output; TrainingError when it fails."""
    from mpd.training import TrainingError

    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TrainingError(f"`{shlex.join(args)}` failed ({error}): data-parallel training inside a SLURM job "
                            "needs the SLURM clients on the compute nodes") from None
    if done.returncode != 0:
        raise TrainingError(f"`{shlex.join(args)}` failed (exit status {done.returncode}): "
                            f"{' '.join(done.stderr.split())[-500:]}")
    return done.stdout


def parse_job(text: str) -> dict[str, str]:
    """``scontrol show job --oneliner``'s ``Key=Value`` fields (values without spaces)."""
    return dict(re.findall(r"(?:^|\s)([^\s=]+)=(\S*)", text))


def job_gpus(fields: Mapping[str, str]) -> int:
    """GPUs allocated to a job: ``gres/gpu=N`` (or the sum of ``gres/gpu:TYPE=N``) in its AllocTRES or TRES."""
    tres = fields.get("AllocTRES") or fields.get("TRES") or ""
    plain = re.findall(r"(?:^|,)gres/gpu=(\d+)", tres)
    if plain:
        return int(plain[0])
    return sum(int(n) for n in re.findall(r"(?:^|,)gres/gpu:[^=,]+=(\d+)", tres))


def slurm_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The SLURM job named by SLURM_JOB_ID (None outside one).

    Asks ``scontrol``: the SLURM jobstep executor of Snakemake keeps no other
    SLURM_* variable in a job's environment (no SLURM_JOB_NODELIST).
    """
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    fields = parse_job(_client(["scontrol", "show", "job", "--oneliner", job_id]))
    nodelist = fields.get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        from mpd.training import TrainingError

        raise TrainingError(f"SLURM job {job_id} has no nodes (scontrol show job: NodeList={nodelist!r})")
    nodes = tuple(_client(["scontrol", "show", "hostnames", nodelist]).split())
    return SlurmJob(job_id, nodes, job_gpus(fields))


def free_port() -> int:
    """A TCP port free on this machine now (the rendezvous port: the batch script runs on the job's first node)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def srun_prefix(job: SlurmJob, tasks: int, cpus_per_task: int) -> list[str]:
    """``srun`` starting `tasks` tasks of `cpus_per_task` CPUs over the job's nodes (at most one node per task);
    any task that fails ends them all, and each output line carries its task number."""
    return ["srun", f"--ntasks={int(tasks)}", f"--nodes={min(len(job.nodes), int(tasks))}",
            f"--cpus-per-task={int(cpus_per_task)}", "--kill-on-bad-exit=1", "--label"]


def launch_command(dataset_dir, out_dir, config_path, tasks: int, threads_per_task: int, *,
                   job: SlurmJob | None = None, port: int | None = None, device: str | None = None,
                   resume: bool = True, python: str = sys.executable) -> list[str]:
    """The command that starts `tasks` ranks of ``python -m mpd.distributed`` (`launch`).

    Outside SLURM (`job` None): ``torchrun --standalone`` with `tasks` processes on this machine. Inside
    a SLURM job: ``srun`` starts `tasks` SLURM tasks (``--cpus-per-task`` each, ``--gpus-per-task=1`` when
    the job has GPUs and the device is not the CPU), each a torchrun agent with one rank; the agents meet
    at a c10d rendezvous on the job's first node (the agent there hosts it; with several agents on that
    node the first to bind the port hosts it, the others connect: torch's c10d backend falls back to a
    client). Any failing rank ends them all (``--max-restarts=0``, ``--kill-on-bad-exit=1``).
    """
    worker = ["-m", "mpd.distributed", str(dataset_dir), str(out_dir), "--config", str(config_path),
              "--threads", str(threads_per_task)]
    if device is not None:
        worker += ["--device", str(device)]
    if not resume:
        worker.append("--no-resume")
    torchrun = [python, "-m", "torch.distributed.run"]
    if job is None:
        return torchrun + ["--standalone", "--nnodes=1", f"--nproc-per-node={tasks}", "--max-restarts=0"] + worker
    if port is None:
        raise ValueError("launch_command: a SLURM launch needs the rendezvous port")
    srun = srun_prefix(job, tasks, threads_per_task)
    if job.gpus and str(device) != "cpu":
        srun.append("--gpus-per-task=1")
    return srun + torchrun + [
        f"--nnodes={tasks}", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={job.nodes[0]}:{port}",
        f"--rdzv-id=mpd-{job.job_id}", "--max-restarts=0"] + worker


def launch_environment(threads_per_task: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: `threads_per_task` threads each, the repository root first on PYTHONPATH."""
    from mpd.threads import THREAD_VARIABLES

    env = dict(os.environ if environ is None else environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads_per_task)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in paths if p != str(REPO_ROOT)])
    return env


def _model_files_state(out_dir: Path) -> dict[str, tuple | None]:
    state = {}
    for name in MODEL_FILES:
        try:
            st = (out_dir / name).stat()
            state[name] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            state[name] = None
    return state


def launch(dataset_dir, out_dir, config, tasks: int, threads_per_task: int = 1, *, device: str | None = None,
           resume: bool = True, log_file=None, environ: Mapping[str, str] | None = None,
           python: str = sys.executable) -> Path:
    """Train with `tasks` data-parallel processes of `threads_per_task` threads; returns out_dir.

    config : the effective ModelConfig (`mpd.stage.effective_model_config`) or the ``model:`` section
        (given the closed-box defaults here); written to ``out_dir/.distributed-config.json`` for the
        ranks and removed afterwards.
    environ : the environment to start from (default os.environ); SLURM_JOB_ID in it selects srun
        inside that job (`slurm_job`), else torchrun on this machine (`launch_command`).
    log_file : the rule's log, named by the error.

    The ranks' output goes to this process's log, line by line. When they fail, the model files
    this launch wrote are removed and TrainingError says so, naming the log and quoting the output's
    last lines.
    """
    from mpd.atomic import atomic_write_bytes
    from mpd.processes import run_logged
    from mpd.stage import effective_model_config
    from mpd.training import TrainingError

    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"launch: tasks must be a positive integer, got {tasks!r}")
    threads_per_task = max(1, int(threads_per_task))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = effective_model_config(config, dataset_dir)
    env = launch_environment(threads_per_task, environ)
    job = slurm_job(env)
    if device is None:
        device = None if config.training.device in (None, "auto") else config.training.device
    if job is not None and job.gpus and str(device) != "cpu" and job.gpus < tasks:
        raise TrainingError(f"SLURM job {job.job_id} has {job.gpus} GPUs for {tasks} training processes: give "
                            f"train_model one GPU per task (set-resources: train_model: gpu: {tasks}, "
                            "tasks_per_gpu: 1), or train on the CPU (model.training.device: cpu)")
    config_path = out_dir / CONFIG_NAME
    command = launch_command(dataset_dir, out_dir, config_path, tasks, threads_per_task, job=job,
                             port=free_port() if job is not None else None, device=device, resume=resume,
                             python=python)
    where = f"SLURM job {job.job_id} on {','.join(job.nodes)}" if job is not None else "this machine"
    log.info("data-parallel training: %d processes, %d thread(s) each (%s): %s", tasks, threads_per_task, where,
             shlex.join(command))
    before = _model_files_state(out_dir)
    atomic_write_bytes(json.dumps({"model": config.to_dict()}, indent=1).encode(), config_path)
    returncode = None
    try:
        returncode, tail = run_logged(command, env, log, 10 * TAIL_LINES)
    finally:
        config_path.unlink(missing_ok=True)
        if returncode != 0:
            _remove_new_model_files(out_dir, before)
    if returncode != 0:
        see = f"the ranks' whole output is in {log_file}" if log_file else "the ranks' whole output is logged above"
        raise TrainingError(
            f"data-parallel training with {tasks} processes ({where}) failed (exit status {returncode}); no model "
            f"files were written ({', '.join(MODEL_FILES)}); {see}; its last lines:\n" + "\n".join(failure_tail(tail)))
    missing = [name for name in MODEL_FILES if not (out_dir / name).is_file()]
    if missing:
        raise TrainingError(f"data-parallel training with {tasks} processes ({where}) ended without writing "
                            f"{', '.join(missing)} in {out_dir}; see {log_file or 'the log above'}")
    return out_dir


def failure_tail(lines: Sequence[str], n: int = TAIL_LINES) -> list[str]:
    """The last `n` lines of the ranks' output, less the torchrun agents' own tracebacks (ChildFailedError,
    SignalException of an agent that srun stopped): the ranks' output and torchrun's summary, which names the
    failed ranks and their exit codes, stay. Lines may carry srun's task label (``0: ``)."""
    lines = list(lines)
    bodies = [re.sub(r"^\s*\d+: ", "", line) for line in lines]
    keep = [True] * len(lines)
    i = 0
    while i < len(lines):
        if bodies[i].startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and bodies[j].startswith(" "):
                j += 1
            if j < len(lines) and "torch.distributed.elastic" in bodies[j]:
                keep[i:j + 1] = [False] * (j + 1 - i)
            i = j
        i += 1
    return [line for line, kept in zip(lines, keep) if kept][-n:]


def _remove_new_model_files(out_dir: Path, before: Mapping[str, tuple | None]) -> None:
    """Remove the model files (and temporary files of any output) a failed launch left in out_dir."""
    after = _model_files_state(out_dir)
    for name in MODEL_FILES:
        if after[name] is not None and after[name] != before[name]:
            (out_dir / name).unlink(missing_ok=True)
    for name in MODEL_FILES + ("training_log.csv", "checkpoint.pt"):
        for tmp in out_dir.glob(f".{name}.*.tmp"):  # `mpd.atomic.atomic_file`'s, of a killed rank
            tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
