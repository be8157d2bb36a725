"""Loader throughput (samples/s) for the 2-D and 3-D phantom datasets, training loaders with
augmentation, data loading only (no model). Prints one JSON line per setting.

    python benchmarks/loader_throughput.py                       # 2d and 3d, workers 0 and 2
    python benchmarks/loader_throughput.py --kinds 3d --workers 4 --cache disk --batches 40
    python benchmarks/loader_throughput.py --augmentation-on workers,device --device cuda

With augmentation_on device the workers only read, crop and resize; `augment_ms` is then the time
the loader's batch_augment takes per batch on --device (synchronised around each call, so it is
the augmentation's own time, not what it costs a training step that overlaps it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segflow.data.loader import build_loaders  # noqa: E402
from segflow.nodes.data import MedicalSegmentationLoaderConfig  # noqa: E402

SETTINGS = {  # what the quickstart / a 3-D phantom workflow use
    "2d": dict(synthetic="phantom2d", image_size=128, batch_size=16, augmentation_strength="medium"),
    "3d": dict(synthetic="phantom3d", image_size=48, batch_size=2, augmentation_strength="medium",
               samples_per_volume=4),
}


def measure(kind: str, workers: int, cache: str, batches: int, root: Path, where: str = "workers",
            device: str = "cpu") -> dict:
    cfg = MedicalSegmentationLoaderConfig(data_dir=str(root / f"phantom{kind}"), num_workers=workers, cache=cache,
                                          cache_dir=str(root / f"cache{kind}"), seed=0, augmentation_on=where,
                                          **SETTINGS[kind])
    t0 = time.perf_counter()
    train, _, info = build_loaders(cfg, log=lambda *_: None)
    setup = time.perf_counter() - t0
    it, seen, warm = iter(train), 0, 2
    for n in range(batches + warm):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train)
            batch = next(it)
        if n == warm - 1:
            t0 = time.perf_counter()
        elif n >= warm:
            seen += batch["image"].shape[0]
    dt = time.perf_counter() - t0
    row = dict(kind=kind, workers=workers, cache=cache, augmentation_on=where,
               sample_shape=list(batch["image"].shape[1:]), batch=cfg.batch_size, samples_s=round(seen / dt, 1),
               setup_s=round(setup, 2), cpus=os.cpu_count())
    if train.batch_augment is not None:
        row.update(device=device, augment_ms=round(augment_ms(train.batch_augment, batch, device), 2))
    return row


def augment_ms(aug, batch: dict, device: str, repeats: int = 20) -> float:
    image, label = batch["image"].to(device), batch["label"].to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    aug(image, label)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        aug(image, label)
    sync()
    return 1000 * (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="2d,3d")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--cache", default="memory", choices=["none", "memory", "disk"])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--augmentation-on", default="workers", help="workers, device, or both: workers,device")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where batch_augment is timed with augmentation_on device")
    ap.add_argument("--root", default=None, help="where phantoms are written (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="segflow-bench-"))
    for kind in args.kinds.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            for where in args.augmentation_on.split(","):
                print(json.dumps(measure(kind, w, args.cache, args.batches, root, where, args.device)), flush=True)


if __name__ == "__main__":
    main()
