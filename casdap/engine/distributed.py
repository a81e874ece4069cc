"""Process-group setup for ``torch.distributed.run`` / ``torch.distributed.launch`` and rank-0 output.

The launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) decides: present means DDP
(``nccl`` on CUDA, ``gloo`` on CPU), absent means one process. CPU and GPU share one code path.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import torch
import torch.distributed as dist

from casdap.errors import CasdapError

_stream: TextIO | None = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def set_console(stream: TextIO | None) -> None:
    """Where :func:`log` writes (``None``: stdout). Evaluation-only runs send progress to stderr
    so stdout holds just the result line."""
    global _stream
    _stream = stream


def log(*parts: object) -> None:
    """Print on rank 0 only."""
    if is_main_process():
        print(*parts, file=_stream or sys.stdout, flush=True)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        log(f"no CUDA device available: running on cpu (asked for --device {name})")
        return torch.device("cpu")
    return device


def join_process_group(device: torch.device, init_method: str = "env://", world_size: int | None = None,
                       rank: int | None = None) -> tuple[int, int]:
    """Join the launcher's process group once (nccl on CUDA, gloo on CPU); ``(rank, world size)``,
    ``(0, 1)`` for a process started alone. World size and rank default to the launcher's variables."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if world > 1 and not is_dist():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        rank = int(os.environ["RANK"]) if rank is None else int(rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method,
                                world_size=world, rank=rank)
        dist.barrier()
    return (get_rank(), get_world_size()) if is_dist() else (0, 1)


def init_distributed_mode(args: argparse.Namespace) -> torch.device:
    """Join the process group if a launcher started us; sets ``args.distributed``, ``args.rank``,
    ``args.world_size``, ``args.gpu`` and returns this process's device."""
    if args.dist_on_itp:
        raise CasdapError("--dist_on_itp True (Microsoft ITP cluster launch) is not supported: launch with "
                          "python -m torch.distributed.run --nproc_per_node N main.py ...")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        if args.world_size > 1:
            raise CasdapError(f"--world_size {args.world_size} needs a launcher: python -m torch.distributed.run "
                              f"--nproc_per_node {args.world_size} main.py ...")
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return resolve_device(args.device)
    args.rank = int(os.environ["RANK"])
    args.world_size = int(os.environ["WORLD_SIZE"])
    args.gpu = int(os.environ.get("LOCAL_RANK", max(args.local_rank, 0)))
    args.distributed = args.world_size > 1
    device = resolve_device(args.device)
    if device.type == "cuda":
        if args.gpu >= torch.cuda.device_count():
            raise CasdapError(f"local rank {args.gpu} has no GPU ({torch.cuda.device_count()} visible): "
                              "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", args.gpu)
    if args.distributed:
        join_process_group(device, args.dist_url, args.world_size, args.rank)
    return device


def all_gather_object(obj: object) -> list:
    if not is_dist():
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
