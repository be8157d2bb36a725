"""Data race: can each pipeline feed the GPU step the issue targets? The MONAI tutorial's pipeline and
segflow's loader, as `race.py` builds them (same files, same crops and batch), without a network: the
consumer sleeps for a simulated step (a GPU step leaves the CPU cores to the loader workers) and the
share of time spent waiting for the next batch is measured, as in a real training loop.

    python benchmarks/data_race.py                          # GPU sizes, workers 0 and 2, no step and the target step
    python benchmarks/data_race.py --small --batches 20     # CPU smoke sizes
    python benchmarks/data_race.py --cases unet2d --workers 0,1,2,4 --step-ms 0,12.7

One JSON line per (case, workers, step, loop) and one with the ratio segflow/plain of samples/s:
  samples_s       2-D images or 3-D patches delivered per second (with --step-ms 0: the pipeline's capacity)
  data_wait_frac  share of the time blocked in the iterator's __next__ (target under 0.05)
  ms_per_sample   with 0 workers: the main process's cost per sample, i.e. one core's work
Step "target" is the issue's step time: 12.7 ms for unet2d (1,260 images/s at batch 16), 72 ms for
swin3d (2 patches per step). With 0 workers a 1-core rate r predicts how many worker cores a target
rate T needs (about T / r: the estimate `cores_for_target`), which is how a figure from a 2-core
machine says something about a 16-core GPU machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_STEP_MS = {"unet2d": 12.7, "swin3d": 72.0}  # the targets on the H200


def _race():
    spec = importlib.util.spec_from_file_location("segflow_race", ROOT / "benchmarks" / "race.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def segflow_dataloader(race, kind, size, data_dir, repeats, workers, seed=0):
    """segflow's training loader, configured exactly as race.py's workflow configures it."""
    from segflow.data.loader import build_loaders
    from segflow.nodes.data import MedicalSegmentationLoaderConfig

    node = race.workflow(kind, size, data_dir, "identical", "cpu", repeats, workers, 0, 1, seed=seed)["nodes"][0]
    train, _, _ = build_loaders(MedicalSegmentationLoaderConfig(**node["config"]), log=lambda _m: None)
    return train


def consume(loader, batches: int, step_s: float, warm: int = 3) -> dict:
    """Take `warm` batches untimed (worker start-up), then `batches` timed ones, sleeping `step_s`
    after each as a GPU step would; restarts the loader at the end of an epoch (its restart counts
    as waiting, as it does in training)."""
    it = iter(loader)
    wait = 0.0
    samples = 0
    t0 = None
    for n in range(warm + batches):
        tw = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        now = time.perf_counter()
        if n == warm:
            t0, wait = tw, 0.0
        if t0 is not None:
            wait += now - tw
            samples += batch["image"].shape[0]
        if step_s:
            time.sleep(step_s)
    dt = time.perf_counter() - t0
    return dict(samples_s=samples / dt, data_wait_frac=wait / dt, batches=batches,
                batch_shape=list(batch["image"].shape), label_dtype=str(batch["label"].dtype).replace("torch.", ""))


def data_race(kind, args, root: Path) -> list[dict]:
    race = _race()
    size = dict(race.CASES[kind]["small" if args.small else "gpu"])
    data_dir = root / f"data_{kind}"
    files = race.write_data(data_dir, size) if not (data_dir / "imagesTr").is_dir() else [
        {"image": str(p), "label": str(data_dir / "labelsTr" / p.name)}
        for p in sorted((data_dir / "imagesTr").glob("*.nii.gz"))]
    repeats = max(1, math.ceil((args.batches + 3) * size["batch"] / size["cases"]))
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        plain = race.plain_dataloader(size, files, repeats, workers, "cpu")
        seg = segflow_dataloader(race, kind, size, data_dir, repeats, workers, args.seed)
        for step in args.step_ms.split(","):
            step_ms = TARGET_STEP_MS[kind] if step == "target" else float(step)
            base = dict(case=kind, batch=size["batch"], patch=size["patch"], workers=workers, step_ms=step_ms)
            got = {}
            for name, loader in (("plain", plain), ("segflow", seg)):
                r = consume(loader, args.batches, step_ms / 1000)
                if workers == 0 and step_ms == 0:
                    r["ms_per_sample"] = 1000 / r["samples_s"]
                    r["cores_for_target"] = (size["batch"] / TARGET_STEP_MS[kind] * 1000) / r["samples_s"]
                got[name] = r
                rows.append({**base, "loop": name, **r})
            rows.append({**base, "loop": "segflow/plain",
                         "samples_s": got["segflow"]["samples_s"] / got["plain"]["samples_s"]})
        del plain, seg  # ends persistent workers before the next setting starts its own
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="unet2d,swin3d", help="comma-separated: unet2d, swin3d")
    ap.add_argument("--small", action="store_true", help="race.py's CPU smoke sizes instead of the GPU sizes")
    ap.add_argument("--workers", default="0,2", help="DataLoader workers for both pipelines, comma-separated")
    ap.add_argument("--step-ms", default="0,target",
                    help="simulated step times, comma-separated; 'target' is the case's target step (see above)")
    ap.add_argument("--batches", type=int, default=60, help="timed batches per setting (after 3 untimed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None, help="folder for the data (default: a temporary one; reused if written)")
    args = ap.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="segflow-data-race-"))
    out = []
    for kind in args.cases.split(","):
        for row in data_race(kind, args, root):
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


if __name__ == "__main__":
    main()
