"""`segflow plan` against nnU-Net v2's fingerprint extraction + planner, side by side, on the same files.

    pip install -e '.[bench]'            # nnunetv2 (and SimpleITK), never a runtime dependency
    python benchmarks/plan_vs_nnunet.py  # phantom3d, ct (anisotropic, 3 classes, one tiny), mr (4 channels)
    python benchmarks/plan_vs_nnunet.py --datasets ct --repeats 3 --workdir /tmp/planbench

Each dataset is written in the MSD layout (benchmarks/plan_datasets.py, segflow.data.phantoms), then
converted to nnU-Net's raw format (Dataset9XX_Name/imagesTr/{case}_{XXXX}.nii.gz, one file per channel;
labelsTr/; dataset.json with channel_names, labels, numTraining, file_ending). Both tools plan that same
folder (segflow reads the nnU-Net layout too), as command-line programs in fresh processes, timed from
start to exit, the best of --repeats: `nnUNetv2_extract_fingerprint -d ID -np N` then
`nnUNetv2_plan_experiment -d ID -gpu_memory_target G` (nnUNet_raw / _preprocessed / _results point into
the work folder), and `segflow plan --gpu-memory G` with a fresh fingerprint file. G defaults to 8, the
budget of nnU-Net's default ExperimentPlanner.

Axis order: segflow keeps the file's voxel axes (i, j, k). nnU-Net reads NIfTI with SimpleITK, whose
arrays are (k, j, i), and then transposes them by its plan's `transpose_forward` (the coarsest axis
first). nnU-Net's per-axis values (spacing, patch, strides) are mapped back before comparing: undo
`transpose_forward` (entry n of the plan is SimpleITK axis transpose_forward[n]), then reverse.

Prints one JSON line per dataset, then a markdown table and the PASS/FAIL of each target.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from plan_datasets import write_ct_like, write_mr_like  # noqa: E402

from segflow.data.phantoms import write_phantom_dataset  # noqa: E402
from segflow.workflow.files import write_json  # noqa: E402

DATASETS = {  # name: (nnU-Net dataset id, writer of the MSD folder)
    "phantom3d": (901, lambda root: write_phantom_dataset(root, "3d", num_test=0)),
    "ct": (902, write_ct_like),
    "mr": (903, write_mr_like),
}
# nnU-Net's normalisation class names, as segflow's plan names the schemes
SCHEME_NAMES = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none",
                "RescaleTo01Normalization": "rescale_0_1", "RGBTo01Normalization": "rgb_0_1"}
SPACING_TOLERANCE = 0.01
MIN_SPEEDUP = 2.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    p.add_argument("--gpu-memory", type=float, default=8.0, help="GiB, the same budget for both (nnU-Net's default 8)")
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="nnU-Net fingerprint processes (-np)")
    p.add_argument("--repeats", type=int, default=1, help="time each tool this many times, keep the best")
    p.add_argument("--workdir", help="keep the datasets and plans here (default: a temporary folder)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("nnunetv2") is None or shutil.which("nnUNetv2_plan_experiment") is None:
        print("plan_vs_nnunet: skipped: nnunetv2 is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 0
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        p.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    with tempfile.TemporaryDirectory(prefix="plan_vs_nnunet-") as tmp:
        work = Path(args.workdir or tmp)
        rows = [compare(name, work, args) for name in names]
    print(markdown(rows, args))
    return 0 if all(all(r["targets"].values()) for r in rows) else 1


def compare(name: str, work: Path, args) -> dict:
    dataset_id, writer = DATASETS[name]
    msd = writer(work / "msd" / name)
    raw = to_nnunet_raw(msd, work / "nnUNet_raw" / f"Dataset{dataset_id}_{name}")
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    nn_fp = best_time(args.repeats, ["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np",
                                     str(args.processes), "--no_pbar"], env)
    nn_plan = best_time(args.repeats, ["nnUNetv2_plan_experiment", "-d", str(dataset_id), "-gpu_memory_target",
                                       f"{args.gpu_memory:g}"], env)
    fp_file = work / "segflow" / name / "fingerprint.json"
    seg = best_time(args.repeats, [sys.executable, "-m", "segflow", "plan", str(raw), "--gpu-memory",
                                   f"{args.gpu_memory:g}", "--fingerprint", str(fp_file), "--dry-run",
                                   "--no-progress", "-o", str(work / "segflow" / f"{name}.json")],
                    dict(os.environ, PYTHONPATH=str(ROOT)), fresh=fp_file)
    plans = json.loads((work / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json").read_text())
    ours = json.loads((fp_file.parent / "plan_3d_fullres.json").read_text())
    row = side_by_side(name, ours, plans, seg, nn_fp + nn_plan)
    row["nnunet_fingerprint_s"], row["nnunet_plan_s"] = round(nn_fp, 2), round(nn_plan, 2)
    print(json.dumps(row), flush=True)
    return row


def to_nnunet_raw(msd: Path, out: Path) -> Path:
    """The MSD folder as an nnU-Net raw dataset: single-channel files are copied byte for byte, 4-D
    images are split into one 3-D file per channel with the same affine."""
    import nibabel as nib

    meta = json.loads((msd / "dataset.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for entry in meta["training"]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        image = nib.load(str(msd / entry["image"]))
        if len(image.shape) == 3:
            shutil.copyfile(msd / entry["image"], out / "imagesTr" / f"{case}_0000.nii.gz")
        else:
            data = image.get_fdata(dtype="float32")
            for ch in range(image.shape[3]):
                nib.save(nib.Nifti1Image(data[..., ch], image.affine), str(out / "imagesTr" / f"{case}_{ch:04d}.nii.gz"))
        shutil.copyfile(msd / entry["label"], out / "labelsTr" / f"{case}.nii.gz")
    write_json(out / "dataset.json", {
        "name": meta["name"], "channel_names": meta["modality"],
        "labels": {name: int(value) for value, name in meta["labels"].items()},
        "numTraining": len(meta["training"]), "file_ending": ".nii.gz"})
    return out


def best_time(repeats: int, command: list[str], env: dict, fresh: Path | None = None) -> float:
    """Wall seconds of `command` (start to exit), the best of `repeats`; `fresh` is deleted before
    each run so a cached result is never reused."""
    times = []
    for _ in range(repeats):
        if fresh is not None:
            fresh.unlink(missing_ok=True)
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"plan_vs_nnunet: {' '.join(command)} failed ({done.returncode}):\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return min(times)


def to_file_axes(values, transpose_forward) -> list:
    """nnU-Net's per-axis values (transposed SimpleITK order) in the file's voxel-axis order."""
    sitk = [None] * len(values)
    for position, axis in enumerate(transpose_forward):
        sitk[axis] = values[position]
    return sitk[::-1]


def nnunet_summary(plans: dict) -> dict:
    cfg = plans["configurations"]["3d_fullres"]
    tf = plans["transpose_forward"]
    arch = cfg["architecture"]["arch_kwargs"]
    strides = [to_file_axes(s, tf) for s in arch["strides"]]
    return {"spacing": [round(float(s), 4) for s in to_file_axes(cfg["spacing"], tf)],
            "normalisation": [SCHEME_NAMES.get(n, n) for n in cfg["normalization_schemes"]],
            "mask_for_norm": list(cfg["use_mask_for_norm"]), "patch": to_file_axes(cfg["patch_size"], tf),
            "batch": cfg["batch_size"], "pools": pools_per_axis(strides), "stages": arch["n_stages"],
            "strides": strides, "transpose_forward": tf}


def segflow_summary(p: dict) -> dict:
    return {"spacing": [round(s, 4) for s in p["spacing"]], "normalisation": p["normalisation"]["schemes"],
            "mask_for_norm": p["normalisation"]["use_mask_for_norm"], "patch": p["patch"], "batch": p["batch_size"],
            "pools": p["pools"], "stages": len(p["strides"]), "strides": p["strides"], "estimate_gib": p["estimate_gib"]}


def pools_per_axis(strides) -> list[int]:
    return [sum(int(math.log2(s[a])) for s in strides) for a in range(len(strides[0]))]


def side_by_side(name: str, ours: dict, plans: dict, seg_s: float, nn_s: float) -> dict:
    s, n = segflow_summary(ours), nnunet_summary(plans)
    targets = {
        "spacing": all(abs(a / b - 1) <= SPACING_TOLERANCE for a, b in zip(s["spacing"], n["spacing"])),
        "normalisation": s["normalisation"] == n["normalisation"] and s["mask_for_norm"] == n["mask_for_norm"],
        "pooling": s["strides"] == n["strides"],
        "patch_batch": all(a <= b for a, b in zip(s["patch"], n["patch"])) and s["batch"] <= n["batch"],
        "speed": nn_s / seg_s >= MIN_SPEEDUP,
    }
    return {"dataset": name, "segflow": s, "nnunet": n, "segflow_s": round(seg_s, 2), "nnunet_s": round(nn_s, 2),
            "speedup": round(nn_s / seg_s, 2), "targets": targets}


def markdown(rows: list[dict], args) -> str:
    def x(values):
        return "×".join(f"{v:g}" for v in values)

    def norm(side):  # "4 × zscore (mask)" when every channel has the same scheme
        named = [f"{s}{' (mask)' if m else ''}" for s, m in zip(side["normalisation"], side["mask_for_norm"])]
        return named[0] if len(named) == 1 else f"{len(named)} × {named[0]}" if len(set(named)) == 1 else ", ".join(named)

    lines = [(f"budget {args.gpu_memory:g} GiB, nnU-Net -np {args.processes}, best of {args.repeats}; "
              "per-axis values in the files' voxel order (segflow | nnU-Net)"), "",
             ("| dataset | target spacing (mm) | normalisation | patch | batch | pooling per axis | stages "
              "| wall time (s) | nnU-Net / segflow |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, n = r["segflow"], r["nnunet"]
        lines.append(f"| {r['dataset']} | {x(s['spacing'])} \\| {x(n['spacing'])} | {norm(s)} \\| {norm(n)} "
                     f"| {x(s['patch'])} \\| {x(n['patch'])} | {s['batch']} \\| {n['batch']} "
                     f"| {x(s['pools'])} \\| {x(n['pools'])} | {s['stages']} \\| {n['stages']} "
                     f"| {r['segflow_s']:.2f} \\| {r['nnunet_s']:.2f} ({r['nnunet_fingerprint_s']:.2f} + "
                     f"{r['nnunet_plan_s']:.2f}) | {r['speedup']:.1f}× |")
    lines += ["", "| dataset | " + " | ".join(rows[0]["targets"]) + " |", "|---" * (len(rows[0]["targets"]) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | " + " | ".join("PASS" if ok else "FAIL" for ok in r["targets"].values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
