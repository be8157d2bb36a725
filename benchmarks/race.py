"""Race: a plain MONAI training loop against the same work through segflow's executor, in one process,
on one device, on the same synthetic NIfTI data (written once into a temporary folder).

    python benchmarks/race.py --small --device cpu                 # CPU smoke sizes, well under a minute
    python benchmarks/race.py --cases swin3d,unet2d --settings identical --device cuda
    python benchmarks/race.py --cases swin3d --settings fast --steps 60 --warmup 1 --epochs 2

Each case prints one JSON line per loop ("plain", "segflow") and one with the ratios segflow/plain.
Both loops run `warmup` whole epochs (not timed: cudnn autotuning, compilation, worker start-up) and
then `epochs` timed epochs of `steps` batches each. Per loop:
  step_ms         timed epoch time / batches: one training step, data loading included (end to end)
  epoch_s         mean timed epoch (training pass only, both loops; segflow's checkpoint writes excluded)
  images_s        training samples (2-D images or 3-D patches) per second
  data_wait_frac  share of the epoch the loop spent blocked in the DataLoader iterator's __next__
  peak_gib        peak CUDA memory allocated in the timed epochs (null on CPU)
  tflops          FLOPs of one step (torch FlopCounterMode on the plain model; same network in both) / step time
  val_dice        foreground Dice of the trained network on held-out cases (written beside the training data,
                  never seen by either loop), scored by one evaluator for both: min-max scaled volumes, fp32,
                  whole 2-D images or 3-D sliding windows of the patch size, argmax, mean Dice over cases
The ratio line also carries dice_diff = segflow's val_dice - plain's (target: within 0.01 after the same steps).
Settings: "identical" runs segflow with the plain loop's precision, no compile, no channels-last and the
same worker count (what is left is the engine's overhead); "fast" runs segflow's defaults (bf16 where the
GPU has it, channels-last, fused AdamW, auto workers) plus compile on CUDA, against the same plain loop.
Compile mode (fast, CUDA): "default" for swin3d (arithmetic-bound: fusion pays), "reduce-overhead" for
unet2d (launch-bound: CUDA graphs pay); --compile MODE or --compile off overrides both.
--augmentation-on device moves segflow's augmentation onto the GPU (fast only).
The plain loop is the MONAI tutorial pattern (CacheDataset -> random crop + flip -> DataLoader with workers
-> step: fp16 + GradScaler for SwinUNETR, fp32 for the 2-D UNet) except that it keeps the loss on the
device instead of calling .item() every step, as segflow does. Each loop keeps its own augmentation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> sizes. "gpu": the sizes; "small": CPU smoke sizes.
CASES = {
    "swin3d": {
        "gpu": dict(dims=3, shape=(160, 160, 128), cases=24, patch=96, batch=2, feature_size=48, norm="instance",
                    val_cases=4),
        # batch norm: at 32^3 the bottleneck is 1x1x1, where instance norm has nothing to normalise
        "small": dict(dims=3, shape=(40, 40, 36), cases=4, patch=32, batch=2, feature_size=12, norm="batch",
                      val_cases=2),
    },
    "unet2d": {
        "gpu": dict(dims=2, shape=(320, 320), cases=256, patch=256, batch=16, base_channels=32, depth=5,
                    val_cases=32),
        "small": dict(dims=2, shape=(80, 80), cases=8, patch=64, batch=4, base_channels=8, depth=3, val_cases=4),
    },
}


def write_data(root: Path, size: dict, seed: int = 0, count: int | None = None) -> list[dict[str, str]]:
    """NIfTI images and labels in imagesTr/labelsTr (which segflow reads as an MSD layout): sparse
    foreground blobs plus noise, as the shared MONAI reference writes. 2-D cases are saved (H, W, 1)."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    shape = tuple(size["shape"]) + ((1,) if size["dims"] == 2 else ())
    files = []
    for i in range(size["cases"] if count is None else count):
        seeds = rng.random(shape) > 0.995
        lab = binary_dilation(seeds, iterations=2).astype(np.uint8)  # blobs, so Dice can be learned
        img = (lab * 50 + rng.normal(100, 20, shape)).astype(np.float32)
        fi, fl = root / "imagesTr" / f"case_{i:03d}.nii.gz", root / "labelsTr" / f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(fi))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(fl))
        files.append({"image": str(fi), "label": str(fl)})
    return files


def build_network(kind: str, size: dict):
    from monai.networks.nets import SwinUNETR, UNet

    if kind == "swin3d":
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=size["feature_size"], spatial_dims=3,
                         norm_name=size["norm"])
    chans = tuple(size["base_channels"] * 2 ** i for i in range(size["depth"]))
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=chans, strides=(2,) * (size["depth"] - 1),
                num_res_units=2)


def plain_precision(kind: str, device: str):
    """The tutorials' choice: fp16 + GradScaler for SwinUNETR on CUDA, fp32 otherwise."""
    import torch

    return torch.float16 if kind == "swin3d" and device.startswith("cuda") else None


def _drop_last_axis(d):  # named, not a lambda: DataLoader workers may need to pickle the transform
    return {k: (v[..., 0] if k in ("image", "label") else v) for k, v in d.items()}


class Repeat:
    """The dataset `times` over; random transforms run per access, so every copy is a new random sample."""

    def __init__(self, ds, times: int):
        self.ds, self.times = ds, times

    def __len__(self):
        return len(self.ds) * self.times

    def __getitem__(self, i):
        return self.ds[i % len(self.ds)]


def plain_dataloader(size, files, repeats, workers, device):
    """The MONAI tutorial's data pipeline: CacheDataset of the deterministic transforms, then per
    sample a random crop (pos/neg by label for 3-D, uniform for 2-D) and flip, batched by MONAI's
    DataLoader with `workers` processes."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandSpatialCropd,
        ScaleIntensityd,
    )

    k = ["image", "label"]
    patch = (size["patch"],) * size["dims"]
    if size["dims"] == 3:
        tf = Compose([LoadImaged(k), EnsureChannelFirstd(k), ScaleIntensityd("image"),
                      RandCropByPosNegLabeld(k, "label", patch, pos=1, neg=1, num_samples=1),
                      RandFlipd(k, prob=0.5, spatial_axis=0), EnsureTyped(k)])
    else:
        tf = Compose([LoadImaged(k), EnsureChannelFirstd(k), ScaleIntensityd("image"), _drop_last_axis,
                      RandSpatialCropd(k, patch), RandFlipd(k, prob=0.5, spatial_axis=0), EnsureTyped(k)])
    ds = Repeat(CacheDataset(files, tf, cache_rate=1.0, num_workers=min(8, os.cpu_count() or 1), progress=False),
                repeats)
    return DataLoader(ds, batch_size=size["batch"], shuffle=True, num_workers=workers,
                      pin_memory=device.startswith("cuda"), persistent_workers=workers > 0)


def plain_loop(kind, size, files, device, repeats, workers, warmup, epochs, lr=1e-4, seed=0):
    """-> (figures, trained network)."""
    import torch
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    set_determinism(seed)
    torch.backends.cudnn.benchmark = True
    dl = plain_dataloader(size, files, repeats, workers, device)
    dev = torch.device(device)
    net = build_network(kind, size).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    amp = plain_precision(kind, device)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)

    def forward_backward(x, y):
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        return loss.detach()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(x, y)
        scaler.step(opt)
        scaler.update()
        return loss

    rows, batch = [], None
    for e in range(warmup + epochs):
        if e == warmup and dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        wait = images = n = 0
        total = torch.zeros((), device=dev)
        it = iter(dl)
        while True:
            tw = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                wait += time.perf_counter() - tw
                break
            wait += time.perf_counter() - tw
            x = batch["image"].to(dev, non_blocking=True).as_tensor()
            y = batch["label"].to(dev, non_blocking=True).as_tensor()
            total += step(x, y)
            images += x.shape[0]
            n += 1
        float(total)  # the one sync per epoch
        dt = time.perf_counter() - t0
        rows.append(dict(time=dt, wait=wait, images=images, steps=n))
    out = _summary(rows[warmup:], dev)
    out.update(steps_run=sum(r["steps"] for r in rows), images_run=sum(r["images"] for r in rows),
               precision=str(amp).replace("torch.", "") if amp else "fp32")
    x = batch["image"].to(dev).as_tensor()
    y = batch["label"].to(dev).as_tensor()
    # forward + backward without an optimizer step, so the network scored below has had exactly the
    # steps segflow's has (the optimizer's element-wise update is not counted by FlopCounterMode anyway)
    out["gflop_per_step"] = _flops(forward_backward, x, y) / 1e9
    opt.zero_grad(set_to_none=True)
    return out, net


def _flops(fn, x, y) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn(x, y)
    return float(fc.get_total_flops())


def val_dice(net, files: list[dict[str, str]], size: dict, device: str) -> float:
    """Mean foreground Dice over held-out cases at their own resolution, the same scoring for both
    loops: each volume min-max scaled (what both pipelines train on), fp32, the whole 2-D image or
    3-D sliding windows of the training patch size, argmax. A case with no foreground in truth and
    prediction scores 1."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    dev = torch.device(device)
    was_training = net.training
    net.eval()
    scores = []
    with torch.no_grad():
        for f in files:
            img = np.asarray(nib.load(f["image"]).dataobj, dtype=np.float32)
            lab = np.asarray(nib.load(f["label"]).dataobj) > 0
            if size["dims"] == 2:
                img, lab = img[..., 0], lab[..., 0]
            img = (img - img.min()) / max(1e-8, float(img.max() - img.min()))
            x = torch.from_numpy(img)[None, None].to(dev)
            if size["dims"] == 3:
                logits = sliding_window_inference(x, (size["patch"],) * 3, 4, net, overlap=0.25)
            else:
                logits = net(x)
            pred = (logits.argmax(1)[0] > 0).cpu().numpy()
            inter, total = float((pred & lab).sum()), float(pred.sum() + lab.sum())
            scores.append(1.0 if total == 0 else 2 * inter / total)
    net.train(was_training)
    return float(np.mean(scores))


def _summary(rows, dev) -> dict:
    import torch

    t = sum(r["time"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return dict(step_ms=1000 * t / max(1, steps), epoch_s=t / max(1, len(rows)),
                images_s=sum(r["images"] for r in rows) / max(1e-9, t),
                data_wait_frac=sum(r["wait"] for r in rows) / max(1e-9, t), peak_gib=peak)


COMPILE_MODE = {"swin3d": "default", "unet2d": "reduce-overhead"}


def workflow(kind, size, data_dir, settings, device, repeats, workers, warmup, epochs, lr=1e-4, seed=0,
             compile_mode=None, augmentation_on="workers") -> dict:
    """The same work as `plain_loop`, written as a segflow workflow. `compile_mode` and
    `augmentation_on` apply to the fast settings only (None: the case's COMPILE_MODE on CUDA)."""
    fast = settings == "fast"
    cuda = device.startswith("cuda")
    compile_ = False
    if fast and cuda:
        mode = compile_mode or COMPILE_MODE[kind]
        compile_ = False if mode == "off" else mode
    if size["dims"] == 3:
        net = {"type": "SwinUNETR", "name": "model",
               "config": {"in_channels": 1, "out_channels": 2, "feature_size": size["feature_size"], "spatial_dims": 3,
                          "norm": size["norm"]}}
    else:
        net = {"type": "UNet2D", "name": "model",
               "config": {"in_channels": 1, "out_channels": 2, "base_channels": size["base_channels"],
                          "depth": size["depth"], "num_res_units": 2}}
    amp = plain_precision(kind, device)
    return {
        "workflow": f"race_{kind}_{settings}",
        "nodes": [
            {"type": "MedicalSegmentationLoader", "name": "data_loader",
             "config": {"data_dir": str(data_dir), "layout": "msd", "spatial_dims": size["dims"],
                        "image_size": size["patch"], "batch_size": size["batch"], "augmentation": True,
                        "augmentation_strength": "light", "normalization": "minmax", "cache": "memory",
                        "num_workers": "auto" if fast else workers, "val_fraction": 0.0, "seed": seed,
                        "augmentation_on": augmentation_on if fast else "workers",
                        "samples_per_volume": repeats,
                        # 2-D: crops at the image's own resolution, uniformly placed, as RandSpatialCropd
                        # cuts them (resizing whole images would be other work, and lose detail)
                        "size_mode": "patches", **({"pos": 0.0, "neg": 1.0} if size["dims"] == 2 else {})}},
            net,
            {"type": "LossFunction", "name": "loss",
             "config": {"loss_type": "combined", "dice_weight": 1.0, "ce_weight": 1.0}},
            {"type": "Optimizer", "name": "optimizer",
             "config": {"optimizer_type": "AdamW", "learning_rate": lr, "weight_decay": 1e-4,
                        # identical: the plain loop's AdamW kernels (torch's foreach), not segflow's fused default
                        "fused": "auto" if fast else False}},
            {"type": "Trainer", "name": "trainer",
             "config": {"epochs": warmup + epochs, "device": device, "seed": seed,
                        "mixed_precision": "auto" if fast else ("fp16" if amp is not None else False),
                        "compile": compile_, "channels_last": "auto" if fast else False,
                        "save_frequency": 0, "save_best_only": True, "log_images": False}},
        ],
    }


def segflow_loop(kind, size, data_dir, tmp: Path, settings, device, repeats, workers, warmup, epochs, lr=1e-4,
                 seed=0, **options):
    """-> (figures, trained network)."""
    import torch

    from segflow.training.device import resolve_precision
    from segflow.workflow.executor import run_workflow

    path = tmp / f"race_{kind}_{settings}.json"
    path.write_text(json.dumps(workflow(kind, size, data_dir, settings, device, repeats, workers, warmup, epochs, lr,
                                        seed, **options),
                               indent=1))
    lines: list[str] = []
    result = run_workflow(path, run_dir=tmp / f"run_{kind}_{settings}", progress=False, log=lines.append)
    history = result.outputs["trainer"]["history"]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = [dict(time=r["train_time"], wait=r["data_wait_fraction"] * r["train_time"],
                 images=r["throughput"] * r["train_time"], steps=r["train_time"] * 1000 / r["step_time_ms"])
            for r in history]
    out = _summary(rows[warmup:], torch.device(device))
    out["peak_gib"] = (max(r["gpu_memory_mb"] for r in history[warmup:]) / 1024
                       if "gpu_memory_mb" in history[-1] else None)
    out.update(steps_run=metrics["global_step"], images_run=round(sum(r["images"] for r in rows)),
               precision=resolve_precision(result.workflow.nodes["trainer"].config.mixed_precision,
                                           torch.device(device), log=lambda _m: None).describe(),
               compile=result.workflow.nodes["trainer"].config.compile,
               augmentation_on=result.workflow.nodes["data_loader"].config.augmentation_on,
               compile_note=next((ln for ln in lines if ln.startswith("compile:")), None))
    return out, result.outputs["trainer"]["model"]


def race(kind: str, args, root: Path) -> list[dict]:
    size = dict(CASES[kind]["small" if args.small else "gpu"])
    data_dir = root / f"data_{kind}"
    files = write_data(data_dir, size)
    device = args.device
    repeats = max(1, math.ceil(args.steps * size["batch"] / size["cases"]))
    workers = args.workers if args.workers is not None else (4 if device.startswith("cuda") else 0)
    base = dict(case=kind, settings=args.settings, device=device, batch=size["batch"], patch=size["patch"],
                cases=size["cases"], data_dir=str(data_dir),
                steps_per_epoch=math.ceil(size["cases"] * repeats / size["batch"]), warmup=args.warmup,
                epochs=args.epochs, seed=args.seed, lr=args.lr)
    held_out = write_data(root / f"val_{kind}", size, seed=1, count=size["val_cases"])
    plain, plain_net = plain_loop(kind, size, files, device, repeats, workers, args.warmup, args.epochs, args.lr,
                                  args.seed)
    plain["val_dice"] = val_dice(plain_net, held_out, size, device)
    del plain_net
    seg, seg_net = segflow_loop(kind, size, data_dir, root, args.settings, device, repeats, workers, args.warmup,
                                args.epochs, args.lr, args.seed, compile_mode=args.compile,
                                augmentation_on=args.augmentation_on)
    seg["val_dice"] = val_dice(seg_net, held_out, size, device)
    del seg_net
    flop = plain.pop("gflop_per_step")
    out = []
    for name, r in (("plain", plain), ("segflow", seg)):
        r["tflops"] = flop / r["step_ms"] if r["step_ms"] else None  # GFLOP per ms = TFLOP per s
        out.append({**base, "loop": name, "gflop_per_step": flop, **r})
    ratio = {k: seg[k] / plain[k] for k in ("step_ms", "epoch_s", "images_s") if plain[k]}
    ratio["dice_diff"] = seg["val_dice"] - plain["val_dice"]
    out.append({**base, "loop": "segflow/plain", **ratio})
    return out


def _round(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="swin3d,unet2d", help="comma-separated: swin3d, unet2d")
    ap.add_argument("--settings", default="identical", choices=["identical", "fast"])
    ap.add_argument("--small", action="store_true", help="CPU smoke sizes instead of the GPU sizes")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--steps", type=int, default=None, help="batches per epoch (default 40; 4 with --small)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default 1)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (default 2)")
    ap.add_argument("--workers", type=int, default=None, help="plain loop's DataLoader workers (default 4 on CUDA, "
                                                              "0 on CPU); segflow uses the same unless --settings fast")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of both loops (default 1e-4, the "
                                                           "tutorials'; 1e-3 converges in fewer steps for the Dice check)")
    ap.add_argument("--seed", type=int, default=0, help="seed of both loops' initialisation, order and augmentation "
                                                        "(the data stay the same); a single run's Dice varies by a "
                                                        "few hundredths with it until training has converged")
    ap.add_argument("--compile", default=None, choices=["off", "default", "reduce-overhead", "max-autotune"],
                    help="segflow's compile mode with --settings fast on CUDA (default: per case, see above)")
    ap.add_argument("--augmentation-on", default="workers", choices=["workers", "device"],
                    help="where segflow augments with --settings fast (default workers)")
    ap.add_argument("--root", default=None, help="folder for data and run directories (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 4 if args.small else 40
    root = Path(args.root or tempfile.mkdtemp(prefix="segflow-race-"))
    rows = []
    for kind in args.cases.split(","):
        if kind not in CASES:
            ap.error(f"--cases: unknown case {kind!r}; choose from {', '.join(CASES)}")
        for row in race(kind, args, root):
            row = _round(row)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
