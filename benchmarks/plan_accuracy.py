"""Accuracy: the workflow `segflow plan` writes against a hand-written default workflow, both trained for the
same number of optimizer steps on the CPU and scored per class on the same validation cases.

    python benchmarks/plan_accuracy.py                       # ct + phantom3d, small sizes: ~10 min on 2 idle cores
    python benchmarks/plan_accuracy.py --datasets ct --epochs 10 --samples-per-volume 10 --cases 20
    python benchmarks/plan_accuracy.py --ct-shape 96,96,32 --phantom-size 64   # the full-size sets (GPU-sized)

Datasets (written into the work folder, MSD layout):
- `ct`: benchmarks/plan_datasets.py's anisotropic CT-like set (0.8 x 0.8 x 3 mm, int16, organ / kidney /
  lesion), at `--ct-shape` (default 48x48x16: half the planning benchmark's size, the structures scaled
  with it, so the lesion has 30-40 voxels);
- `phantom3d`: segflow's 3-D phantom (1.2 x 1.2 x 2 mm, CT), `--phantom-size` (default 32: 32x32x24).

The two workflows, both run through segflow's own API (`segflow plan`, then
`segflow.workflow.executor.run_workflow`, as tests/test_planning.py runs a planned workflow):
- planned: what `segflow plan DATA --gpu-memory 8 --epochs E` writes, unchanged but for the overrides below;
  its Predictor mirrors along every axis (TTA), so a second Predictor + Evaluator without TTA are added
  (linked explicitly) to show what the mirroring adds;
- default: the hand-written 3-D recipe of workflows/phantom3d_unet.json with the network at its defaults:
  UNet3D (base 16, depth 5, residual units), image_size 96 or the largest size the smallest case holds
  (a multiple of the UNet's divisor 16), per-case z-score, medium augmentation, pos 1 / neg 1 patches,
  Dice + CE 0.5 / 0.5, Adam 3e-3, cosine schedule, batch `--default-batch` (2, as that workflow), and a
  Predictor and Evaluator at their defaults (Gaussian sliding windows, overlap 0.5, no TTA).

Fair by construction: both train for the same optimizer steps (`--epochs` x the batches an epoch makes of
`--samples-per-volume` patches per training case; the default's samples per volume are scaled when its
batch differs), on the same split (the loader's val_fraction 0.2 and seed 42 in both; the script checks
that both scored the same cases), validating only after the last epoch (so the output weights are the last
ones), on the CPU (mixed precision off there, as the Trainer decides), worker processes as the loader
decides. Dice per class is the Evaluator's: the mean over the validation cases.

Prints one JSON line per run and then a markdown table per dataset with the targets of issue 15
(planned >= default per class; no class at 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from plan_datasets import write_ct_like  # noqa: E402

from segflow.workflow.files import write_json  # noqa: E402

DEFAULT_IMAGE_SIZE = 96  # the loader's 3-D default
UNET3D_DIVISOR = 16  # UNet3D's default depth 5: four poolings
VAL_FRACTION = 0.2  # the loader's default, also what the planner writes


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="plan_accuracy-"))
    print(f"plan_accuracy: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"work folder {work}", flush=True)
    tables = []
    for name in args.datasets:
        rows = compare(name, work, args)
        tables.append(markdown(name, rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print("\n\n".join(tables))
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ct,phantom3d", help="comma-separated, of ct, phantom3d")
    p.add_argument("--cases", type=int, default=10, help="cases per dataset (a fifth of them validate)")
    p.add_argument("--ct-shape", default="48,48,16", help="CT-like volume shape (x,y,z); 96,96,32 is the full set")
    p.add_argument("--phantom-size", type=int, default=32, help="phantom edge (the volume is s x s x 3s/4)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples-per-volume", type=int, default=5, help="patches per training case per epoch (plan)")
    p.add_argument("--default-batch", type=int, default=2, help="the default workflow's batch size")
    p.add_argument("--workdir", help="keep datasets, workflows and runs here (default: a new temporary folder)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:SET;SET",
                   help="also train the planned workflow with these --set overrides, to find what makes a "
                        "difference, e.g. 'adam:optimizer.optimizer_type=Adam;optimizer.learning_rate=0.003'")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(args.datasets) - {"ct", "phantom3d"})
    if unknown:
        p.error(f"unknown dataset {unknown[0]!r}; choose from ct, phantom3d")
    args.ct_shape = tuple(int(v) for v in args.ct_shape.split(","))
    return args


def write_dataset(name: str, root: Path, args) -> Path:
    if name == "ct":
        return write_ct_like(root, num_cases=args.cases, shape=args.ct_shape)
    from segflow.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(root, "3d", num_cases=args.cases, size=args.phantom_size, num_test=0)


def compare(name: str, work: Path, args) -> list[dict]:
    from segflow.cli import main as segflow_main

    data = write_dataset(name, work / "data" / name, args)
    planned_path = work / "workflows" / f"{name}_planned.json"
    code = segflow_main(["plan", str(data), "--gpu-memory", "8", "--epochs", str(args.epochs), "-o", str(planned_path),
                         "--fingerprint", str(work / "plans" / name / "fingerprint.json"), "--force", "--no-progress"])
    if code != 0:
        raise SystemExit(f"plan_accuracy: segflow plan {data} failed")
    planned = json.loads(planned_path.read_text())
    add_plain_prediction(planned)
    write_json(planned_path, planned)
    plan = json.loads((work / "plans" / name / "plan_3d_fullres.json").read_text())
    steps = steps_per_epoch(args.cases, args.samples_per_volume, plan["batch_size"])
    default_spv = matching_samples_per_volume(args.cases, steps, args.default_batch)
    default_path = work / "workflows" / f"{name}_default.json"
    fp = json.loads((work / "plans" / name / "fingerprint.json").read_text())
    image_size = fitting_image_size([c["shape"] for c in fp["cases"]])
    write_json(default_path, default_workflow(str(data), plan["in_channels"], plan["num_classes"], image_size,
                                              args.epochs, default_spv, args.default_batch))
    common = [f"trainer.epochs={args.epochs}", f"trainer.validate_every={args.epochs}", "trainer.save_frequency=0"]
    planned_sets = common + [f"data_loader.samples_per_volume={args.samples_per_volume}"]
    runs = [("planned", planned_path, planned_sets), ("default", default_path, common)]
    for variant in args.variant:  # e.g. "adam:optimizer.optimizer_type=Adam;optimizer.learning_rate=0.003"
        label, _, sets = variant.partition(":")
        runs.append((f"planned, {label}", planned_path, planned_sets + [v for v in sets.split(";") if v]))
    rows = [train_and_score(name, label, path, sets, work / "runs" / name / label.replace(", ", "_"))
            for label, path, sets in runs]
    cases = {tuple(sorted(r["cases"])) for r in rows}
    if len(cases) != 1 or len({r["steps"] for r in rows}) != 1:
        raise SystemExit(f"plan_accuracy: unfair comparison on {name}: cases {cases}, steps {[r['steps'] for r in rows]}")
    return rows


def add_plain_prediction(workflow: dict) -> None:
    """A second Predictor without TTA and its Evaluator, linked explicitly (two Predictors make the
    Evaluators' input ambiguous for auto-wiring)."""
    nodes = workflow["nodes"]
    predictor = next(n for n in nodes if n["type"] == "Predictor")
    plain = {**predictor["config"], "tta": False, "output_dir": "predictions_plain"}
    nodes += [{"type": "Predictor", "name": "predictor_plain", "config": plain},
              {"type": "Evaluator", "name": "evaluator_plain", "config": {"metrics": ["dice"],
                                                                          "output_dir": "evaluation_plain"}}]
    workflow["links"] = workflow.get("links", []) + [
        {"source_node": "predictor", "source_port": "predictions", "target_node": "evaluator",
         "target_port": "predictions"},
        {"source_node": "predictor_plain", "source_port": "predictions", "target_node": "evaluator_plain",
         "target_port": "predictions"}]


def steps_per_epoch(num_cases: int, samples_per_volume: int, batch: int) -> int:
    """Optimizer steps in one epoch: the training cases (segflow.data.splits: ceil(cases x val_fraction)
    validate) times the patches per case, in batches (the loader keeps the last, smaller batch)."""
    train = num_cases - math.ceil(num_cases * VAL_FRACTION)
    return math.ceil(train * samples_per_volume / batch)


def matching_samples_per_volume(num_cases: int, steps: int, batch: int) -> int:
    """The samples per volume that make `steps` steps per epoch at `batch`; an error when none does."""
    train = num_cases - math.ceil(num_cases * VAL_FRACTION)
    spv = max(1, round(steps * batch / train))
    if steps_per_epoch(num_cases, spv, batch) != steps:
        raise SystemExit(f"plan_accuracy: no samples_per_volume gives {steps} steps per epoch at batch {batch} with "
                         f"{train} training cases; choose --samples-per-volume or --default-batch to fit")
    return spv


def fitting_image_size(case_shapes) -> list[int]:
    """96 per axis, or less where the smallest case is smaller: the largest multiple of the UNet's divisor
    that fits every case, so no patch is mostly padding."""
    smallest = [min(s[a] for s in case_shapes) for a in range(3)]
    return [max(UNET3D_DIVISOR, min(DEFAULT_IMAGE_SIZE, s // UNET3D_DIVISOR * UNET3D_DIVISOR)) for s in smallest]


def default_workflow(data_dir: str, in_channels: int, num_classes: int, image_size, epochs: int, spv: int,
                     batch: int) -> dict:
    return {
        "workflow": "default_unet3d",
        "description": "The hand-written 3-D recipe (workflows/phantom3d_unet.json) with UNet3D at its defaults.",
        "nodes": [
            {"type": "MedicalSegmentationLoader", "name": "data_loader", "config": {
                "data_dir": data_dir, "spatial_dims": 3, "image_size": image_size, "batch_size": batch,
                "samples_per_volume": spv, "val_fraction": VAL_FRACTION}},
            {"type": "UNet3D", "name": "model", "config": {"in_channels": in_channels, "out_channels": num_classes}},
            {"type": "LossFunction", "name": "loss", "config": {"loss_type": "combined", "dice_weight": 0.5,
                                                                "ce_weight": 0.5}},
            {"type": "Optimizer", "name": "optimizer", "config": {"optimizer_type": "Adam", "learning_rate": 0.003}},
            {"type": "Trainer", "name": "trainer", "config": {"epochs": epochs, "lr_schedule": "cosine"}},
            {"type": "Predictor", "name": "predictor", "config": {}},
            {"type": "Evaluator", "name": "evaluator", "config": {"metrics": ["dice"]}},
        ],
    }


def train_and_score(dataset: str, label: str, path: Path, sets: list[str], run_dir: Path) -> dict:
    from segflow.workflow.executor import run_workflow

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_file = run_dir.parent / f"{label}.log"
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with open(log_file, "w") as log:
        result = run_workflow(path, sets=sets, device="cpu", run_dir=run_dir, overwrite=True, progress=False,
                              log=lambda line: print(line, file=log, flush=True))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    summary = json.loads((result.run_dir / "metrics.json").read_text())
    loader_cfg = result.workflow.nodes["data_loader"].config
    row = {"dataset": dataset, "workflow": label, "steps": summary["global_step"], "patch": _patch(loader_cfg.image_size),
           "batch": loader_cfg.batch_size, "train_s": round(result.timings["trainer"], 1), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           **scores(result.outputs["evaluator"]["metrics"])}
    if "evaluator_plain" in result.outputs:
        row["no_tta"] = scores(result.outputs["evaluator_plain"]["metrics"])["dice"]
    print(json.dumps(row), flush=True)
    return row


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers), user + system: on a
    shared machine a steadier measure of the work than the wall clock."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _patch(size) -> list[int]:
    return list(size) if isinstance(size, (list, tuple)) else [size] * 3


def scores(metrics: dict) -> dict:
    """Dice per class (mean over cases), their mean, and the cases scored."""
    dice = {name: round(entry["dice"]["mean"], 4) for name, entry in metrics["per_class"].items()}
    return {"dice": dice, "mean": round(metrics["mean"]["dice"], 4),
            "cases": sorted({str(row["case"]) for row in metrics["cases"]})}


def markdown(name: str, rows: list[dict]) -> str:
    classes = list(rows[0]["dice"])
    head = ["workflow", "patch × batch", "steps", *classes, "mean", "train (s)", "wall (s)", "CPU (s)"]
    lines = [f"{name}: Dice per class (mean over {len(rows[0]['cases'])} validation cases)", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [r["workflow"], f"{'×'.join(map(str, r['patch']))} × {r['batch']}", str(r["steps"]),
                 *(f"{r['dice'][c]:.3f}" for c in classes), f"{r['mean']:.3f}", f"{r['train_s']:.0f}",
                 f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
        if "no_tta" in r:
            plain = r["no_tta"]
            lines.append("| " + " | ".join([f"{r['workflow']}, no TTA", "", "", *(f"{plain[c]:.3f}" for c in classes),
                                           f"{sum(plain.values()) / len(plain):.3f}", "", "", ""]) + " |")
    planned, default = (next(r for r in rows if r["workflow"] == w) for w in ("planned", "default"))
    per_class = all(planned["dice"][c] >= default["dice"][c] for c in classes)
    nonzero = all(planned["dice"][c] > 0 for c in classes)
    lines += ["", f"targets: planned >= default in every class: {'PASS' if per_class else 'FAIL'}; "
                  f"no class at 0 (planned): {'PASS' if nonzero else 'FAIL'}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
