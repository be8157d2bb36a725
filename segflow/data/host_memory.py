"""Host memory: what this machine has available, and a floor of what a loader's training batches
take, so that `segflow run` refuses an image_size whose batches cannot fit before any work starts
(MedicalSegmentationLoader.preflight) rather than minutes later in an allocation deep in OpenCV.

Plain Python (no numpy, no torch): the node declarations call it without importing anything heavy.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
# bytes per voxel of one sample: the float32 image (per channel) and its uint8 label (CaseSource)
IMAGE_BYTES, LABEL_BYTES = 4, 1


@dataclass(frozen=True)
class BatchNeed:
    """`batches` training batches of `batch_bytes` each, held at once by one loader, times `processes`
    loaders on this machine (torchrun's local processes)."""

    batch_bytes: int
    batches: int
    processes: int = 1

    @property
    def total(self) -> int:
        return self.batch_bytes * self.batches * self.processes


def batch_need(batch_size: int, size: tuple[int, ...], channels: int, workers: int, prefetch_factor: int,
               processes: int = 1) -> BatchNeed:
    """A floor of the host memory a training loader holds at its peak, counting only the batches
    themselves (no decoded cases, cache, augmentation temporaries or network):

    * workers 0: the batch the Trainer is on (its loop holds it while asking for the next), the
      next batch's samples, and their stacked copy made by collation: 3 batches;
    * workers > 0: the batch the Trainer is on, and num_workers × prefetch_factor batches the
      workers prepare ahead.
    """
    sample = math.prod(size) * (IMAGE_BYTES * max(1, channels) + LABEL_BYTES)
    batches = workers * prefetch_factor + 1 if workers > 0 else 3
    return BatchNeed(batch_size * sample, batches, max(1, processes))


def available() -> tuple[int, str] | None:
    """(bytes a process can still allocate without swapping, where that number comes from), or None
    when this system says nothing. /proc/meminfo's MemAvailable, lowered to what a cgroup memory
    limit leaves (containers, Slurm jobs: the kernel kills the job there, whatever the host has free);
    else, off Linux, the physical memory."""
    found = _meminfo_available()
    limit = _cgroup_room()
    if limit is not None and (found is None or limit < found[0]):
        return limit, "the cgroup memory limit less what the cgroup uses"
    if found is not None:
        return found
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    except (ValueError, OSError, AttributeError):
        return None


def _meminfo_available() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Limit minus working set (usage less reclaimable page cache, as `docker stats` counts it) of
    this process's memory cgroup, v2 or v1 (the smallest where several apply); None without a limit."""
    rooms = []
    for folder, limit, usage, cache in _cgroup_files():
        try:
            cap = (folder / limit).read_text().strip()
            if cap == "max" or int(cap) >= 2 ** 60:  # v1 writes "no limit" as a huge number
                continue
            used = int((folder / usage).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
            rooms.append(max(0, int(cap) - used + int(stat.get(cache, 0))))
        except (OSError, ValueError):
            continue
    return min(rooms, default=None)


def _cgroup_files():
    """(folder, limit file, usage file, inactive page cache key) of the v2 and v1 memory cgroups
    that may hold this process: its own cgroup's folder, and the mount's root (inside a container
    the root is the container's cgroup)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    own = {kind: path for _, kind, path in (line.split(":", 2) for line in lines if line.count(":") >= 2)}
    root = Path("/sys/fs/cgroup")
    for base in (root / own.get("", "/").lstrip("/"), root):
        yield base, "memory.max", "memory.current", "inactive_file"
    for base in (root / "memory" / own.get("memory", "/").lstrip("/"), root / "memory"):
        yield base, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"


def gib(n: float) -> str:
    """Bytes as GiB to 3 significant digits (MiB below 1 GiB, KiB below 1 MiB)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"
