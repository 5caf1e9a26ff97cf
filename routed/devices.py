"""Where training runs: the device, the thread count, and the processes of a torchrun launch."""

from __future__ import annotations

import os

import torch


def default_threads() -> int:
    """Intra-op threads: ROUTED_NUM_THREADS if set, else the cores this process may run on.

    More threads than cores (or two busy processes sharing them) slows small matmuls sharply.
    """
    if os.environ.get("ROUTED_NUM_THREADS", "").isdigit() and int(os.environ["ROUTED_NUM_THREADS"]) > 0:
        return int(os.environ["ROUTED_NUM_THREADS"])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def pick_device(name: str | None = None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1", "mps") when given, else the first of cuda, mps, cpu available."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {name!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from exc
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_ok}
    if not available.get(device.type, False):
        raise ValueError(f"device: {name!r} is not available on this machine (cpu, cuda, cuda:N, mps or auto)")
    return device


def start_distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we started the process group) under torchrun; (0, 1, ...) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device, False
    import torch.distributed as dist

    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


def all_reduce_sum(values: list[float], world: int) -> list[float]:
    """Element-wise sum over the processes of a distributed run (identity for one process)."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
