"""Data-parallel training with torch.distributed (torchrun): gloo on CPU, NCCL on GPU (docs/training.md).

    torchrun --standalone --nproc_per_node=N -m mpd.distributed DATASET_DIR OUT_DIR [--config model.yaml]

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
from collections.abc import Sequence
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
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return context(), device if cuda else (device if device not in (None, "auto") else "cpu")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Train (data-parallel when launched by torchrun) and write model.pt, rollout_step.pt, training_log.csv."""
    parser = argparse.ArgumentParser(prog="python -m mpd.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", help="the geometry stage's output (or its dataset/ folder)")
    parser.add_argument("out_dir", help="model folder: checkpoint.pt, training_log.csv, model.pt, rollout_step.pt")
    parser.add_argument("--config", help="YAML/JSON file with the model: section (or the section itself)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: model.training.device)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoint.pt matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from mpd.params import ModelConfig
    from mpd.training import model_metadata, save_model, save_scripted_step, train, write_log

    config = ModelConfig.from_config(read_model_section(args.config))
    device = args.device if args.device is not None else config.training.device
    ctx, device = init_from_env(device)
    try:
        out_dir = Path(args.out_dir)
        result = train(args.dataset_dir, out_dir, config, device=device, resume=not args.no_resume)
        if ctx.is_main:
            metadata = model_metadata(result, config, args.dataset_dir, config.training.dtype)
            metadata["world_size"] = ctx.world_size
            save_model(result.model, result.model_kwargs, metadata, out_dir / "model.pt")
            save_scripted_step(result.model, out_dir / "rollout_step.pt")
            write_log(result.log, out_dir / "training_log.csv")
        if ctx.active:
            dist.barrier()
    finally:
        if ctx.active and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
