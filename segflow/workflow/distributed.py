"""Multi-process training through torchrun: process-group setup and teardown, rank helpers,
and the few collectives the rest of segflow needs.

A process is part of a distributed job when torchrun (or `segflow run --nproc-per-node N`, which
calls torchrun's own entry point) has set WORLD_SIZE/RANK/LOCAL_RANK in its environment. Without
them every helper answers as for a single process, so callers need no special case.

torch is imported inside the functions: `segflow validate --check-paths` imports the executor,
which imports this module, and validation must not load torch.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

# How long a collective waits for a missing rank before failing. torchrun stops the whole job as
# soon as one rank exits with an error, so this only matters for a rank that hangs without dying.
DEFAULT_TIMEOUT_S = 1800


def launched() -> bool:
    """True when torchrun started this process (it sets WORLD_SIZE for every worker)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch builds without distributed support
        return False
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    if initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def rank_seed(seed: int) -> int:
    """This rank's seed: `seed` itself on rank 0, so a 1-process job draws what a plain run draws,
    and a seed of its own on every other rank, so ranks do not repeat each other's random draws."""
    return int(seed) + 1_000_003 * rank()


def is_main() -> bool:
    """Rank 0 writes the run directory, checkpoints, logs, TensorBoard and progress bars."""
    return rank() == 0


def backend_for(device: str | None) -> str:
    """nccl when the job trains on GPUs, gloo on CPU (nccl has no CPU tensors)."""
    import torch

    wants_cpu = (device or "auto").strip().lower() in ("cpu", "mps")
    return "nccl" if torch.cuda.is_available() and not wants_cpu else "gloo"


def setup(device: str | None = None) -> bool:
    """Join the process group torchrun prepared; returns True when this process is in one.

    `device` is the device the run trains on ("auto", "cpu", "cuda", ...): it picks the backend. With
    nccl each process takes the GPU numbered by its LOCAL_RANK, so `cuda` means "this rank's GPU".
    SEGFLOW_DIST_TIMEOUT (seconds) overrides the collective timeout.
    """
    if not launched():
        return False
    if initialized():
        return True
    import torch
    import torch.distributed as dist

    backend = backend_for(device)
    if backend == "nccl":
        n = torch.cuda.device_count()
        if local_rank() >= n:
            raise RuntimeError(f"LOCAL_RANK {local_rank()} but this machine has {n} GPU(s); start at most "
                               f"{n} processes per node (--nproc-per-node {n})")
        torch.cuda.set_device(local_rank())
    timeout = timedelta(seconds=float(os.environ.get("SEGFLOW_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend=backend, timeout=timeout)
    return True


def teardown() -> None:
    if initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier() -> None:
    if initialized() and world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (any picklable value); the value itself when alone."""
    if not initialized() or world_size() == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not initialized() or world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(tensor, op: str = "sum"):
    """Reduce `tensor` in place over all ranks ("sum" or "max") and return it; unchanged when alone.
    The tensor must live on the backend's device (CPU for gloo, this rank's GPU for nccl)."""
    if initialized() and world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast_buffers_(module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every rank's module, in place.
    DDP broadcasts them only at the start of each training forward, so after the last training
    step of an epoch every rank holds its own; checkpoints hold rank 0's."""
    if initialized() and world_size() > 1:
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def wait_for_main() -> None:
    """With `release_others`, brackets work rank 0 must do first (write a phantom dataset, fill a disk
    cache) so the other ranks find its files in place instead of racing to write the same ones.
    Non-main ranks wait here until rank 0 reaches `release_others`."""
    if not is_main():
        barrier()


def release_others() -> None:
    if is_main():
        barrier()
