"""Loader throughput (samples/s) for the 2-D and 3-D phantom datasets, training loaders with
augmentation, data loading only (no model). Prints one JSON line per setting.

    python benchmarks/loader_throughput.py                       # 2d and 3d, workers 0 and 2
    python benchmarks/loader_throughput.py --kinds 3d --workers 4 --cache disk --batches 40
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segflow.data.loader import build_loaders  # noqa: E402
from segflow.nodes.data import MedicalSegmentationLoaderConfig  # noqa: E402

SETTINGS = {  # what the quickstart / a 3-D phantom workflow use
    "2d": dict(synthetic="phantom2d", image_size=128, batch_size=16, augmentation_strength="medium"),
    "3d": dict(synthetic="phantom3d", image_size=48, batch_size=2, augmentation_strength="medium",
               samples_per_volume=4),
}


def measure(kind: str, workers: int, cache: str, batches: int, root: Path) -> dict:
    cfg = MedicalSegmentationLoaderConfig(data_dir=str(root / f"phantom{kind}"), num_workers=workers, cache=cache,
                                          cache_dir=str(root / f"cache{kind}"), seed=0, **SETTINGS[kind])
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
    return dict(kind=kind, workers=workers, cache=cache, sample_shape=list(batch["image"].shape[1:]),
                batch=cfg.batch_size, samples_s=round(seen / dt, 1), setup_s=round(setup, 2), cpus=os.cpu_count())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="2d,3d")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--cache", default="memory", choices=["none", "memory", "disk"])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--root", default=None, help="where phantoms are written (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="segflow-bench-"))
    for kind in args.kinds.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            print(json.dumps(measure(kind, w, args.cache, args.batches, root)), flush=True)


if __name__ == "__main__":
    main()
