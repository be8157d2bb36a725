"""`segflow predict` against MONAI's SlidingWindowInferer used directly, on the same 3-D volumes, model,
window, overlap, Gaussian blending and flip TTA, in one process on the same threads.

    python benchmarks/predict_vs_monai.py                       # 3 volumes of 128x128x64, window 64x64x32
    python benchmarks/predict_vs_monai.py --size 160 160 96 --cases 4 --workdir /tmp/predbench

The package comes from a 1-epoch training run on the 3-D phantom (weights do not matter for speed).
Both sides do the whole job per case: read the NIfTI, z-score, predict (sliding window, TTA: the plain
prediction and one flip per axis, softmax averaged), argmax, write a NIfTI in the input's geometry.
segflow's time per case is `segflow predict`'s own (its outcome), MONAI's is timed around the same steps
written as the MONAI tutorials write them (LoadImage, NormalizeIntensity, SlidingWindowInferer, nibabel).
Start-up: segflow opening the package and building the network, before the first case.
Prints a JSON line and a markdown table with the ratio (target: segflow within 5% of MONAI, or faster).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = (64, 64, 32)


def make_package(work: Path) -> Path:
    from segflow.packaging.build import make_package as package
    from segflow.workflow.executor import run_workflow

    wf = work / "train.json"
    wf.write_text(json.dumps({"workflow": "predbench", "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data", "config": {
            "data_dir": str(work / "phantom3d"), "synthetic": "phantom3d", "synthetic_cases": 4,
            "image_size": list(WINDOW), "batch_size": 2}},
        {"type": "UNet3D", "name": "model", "config": {"in_channels": 1, "out_channels": 2, "base_channels": 16}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "dice_ce"}},
        {"type": "Optimizer", "name": "opt", "config": {}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}},
        {"type": "Predictor", "name": "predictor", "config": {"tta": True, "overlap": 0.5, "sw_batch_size": 4}}]}))
    run_workflow(wf, device="cpu", progress=False, log=lambda _m: None, run_dir=work / "run", until="trainer")
    return package(work / "run", work / "model", exports=False, log=lambda _m: None)


def write_volumes(folder: Path, size: tuple[int, ...], cases: int) -> None:
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for i in range(cases):
        volume = rng.normal(0, 1, size).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, affine), folder / f"case{i:02d}.nii.gz")


def monai_predict(net, images: list[Path], out: Path) -> list[float]:
    """The MONAI tutorial way, step by step, timed per case."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import LoadImage, NormalizeIntensity

    out.mkdir(parents=True, exist_ok=True)
    loader, normalise = LoadImage(image_only=True, ensure_channel_first=True), NormalizeIntensity(channel_wise=True)
    inferer = SlidingWindowInferer(roi_size=WINDOW, sw_batch_size=4, overlap=0.5, mode="gaussian")
    times = []
    with torch.no_grad():
        for path in images:
            started = time.perf_counter()
            image = normalise(loader(str(path)))[None].float()
            probs = None
            for axes in ((), (2,), (3,), (4,)):  # plain, then one flip per spatial axis
                x = torch.flip(image, axes) if axes else image
                p = torch.softmax(inferer(x, net), 1)
                p = torch.flip(p, axes) if axes else p
                probs = p if probs is None else probs + p
            label = probs.argmax(1)[0].numpy().astype(np.uint8)
            affine = nib.load(str(path)).affine
            nib.save(nib.Nifti1Image(label, affine), out / path.name)
            times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[128, 128, 64])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    import torch

    from segflow.packaging.contents import open_package
    from segflow.packaging.predict import network_of, predict_folder

    work = args.workdir or Path(tempfile.mkdtemp(prefix="predbench-"))
    work.mkdir(parents=True, exist_ok=True)
    package_dir = make_package(work)
    write_volumes(work / "in", tuple(args.size), args.cases)
    images = sorted((work / "in").glob("*.nii.gz"))
    started = time.perf_counter()
    package = open_package(package_dir)
    outcome = predict_folder(package, work / "in", work / "out_segflow", tta=True, overwrite=True, progress=False)
    total = time.perf_counter() - started
    assert not outcome.failed, outcome.failed
    net = network_of(package, "torch", "cpu").eval()
    monai_times = monai_predict(net, images, work / "out_monai")
    ours = [s for _, _, s in outcome.predicted]
    row = {"size": args.size, "cases": args.cases, "window": list(WINDOW), "threads": torch.get_num_threads(),
           "segflow_s_per_case": sum(ours) / len(ours), "monai_s_per_case": sum(monai_times) / len(monai_times),
           "segflow_startup_s": outcome.startup_seconds, "segflow_total_s": total}
    row["ratio_segflow_over_monai"] = row["segflow_s_per_case"] / row["monai_s_per_case"]
    print(json.dumps(row))
    print("| volume | window | cases | segflow predict s/case | MONAI SlidingWindowInferer s/case | ratio | start-up |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {'x'.join(map(str, args.size))} | {'x'.join(map(str, WINDOW))} | {args.cases} | "
          f"{row['segflow_s_per_case']:.2f} | {row['monai_s_per_case']:.2f} | {row['ratio_segflow_over_monai']:.3f} | "
          f"{row['segflow_startup_s']:.2f} s |")
    verdict = "PASS" if row["ratio_segflow_over_monai"] <= 1.05 else "FAIL"
    print(f"{verdict}: segflow predict within 5% of MONAI's SlidingWindowInferer (or faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
