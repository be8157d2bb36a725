"""`segflow plan DATA_DIR`: fingerprint, plan, and write the workflow (and the plan as data)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from segflow.planning.errors import PlanError
from segflow.planning.fingerprint import fingerprint
from segflow.planning.planner import Plan, plan
from segflow.planning.spacing import fmt
from segflow.planning.workflow import build, default_path, write
from segflow.workflow.files import write_json

DEFAULT_GPU_GIB = 24.0  # when no GPU is visible: a common training card
PLAN_FOLDER = ".segflow_plan"  # inside data_dir, next to the loader's .segflow_cache


def run(args) -> int:
    data_dir = Path(args.data_dir)
    fp_path = Path(args.fingerprint) if args.fingerprint else data_dir / PLAN_FOLDER / "fingerprint.json"
    budget = args.gpu_memory or visible_gpu_gib() or DEFAULT_GPU_GIB
    try:
        fp = fingerprint(data_dir, fp_path, args.layout, progress=not args.no_progress)
        result = plan(fp, args.config, budget)
        path = Path(args.output) if args.output else default_path(result)
        document = build(result, args.data_dir, args.epochs, path)
        if not args.dry_run:
            write(document, path, args.force)
    except PlanError as e:
        print(f"segflow plan: {e}", file=sys.stderr)
        return 1
    write_json(fp_path.parent / f"plan_{result.config}.json", result.as_json())
    for warning in result.warnings:
        print(f"segflow plan: warning: {warning}", file=sys.stderr)
    print(summary(result))
    if args.explain:
        print(result.explain())
    print(f"segflow plan: {'would write' if args.dry_run else 'wrote'} {path}; the fingerprint and plan are in "
          f"{fp_path.parent}" + ("" if args.explain else "; --explain says why each value was chosen"))
    return 0


def summary(p: Plan) -> str:
    spacing = fmt(p.target_spacing) if p.target_spacing else f"{fmt(p.spacing)} (as stored)"
    norm = p.loader_normalisation.get("channel_normalization") or p.loader_normalisation["normalization"]
    return (f"segflow plan: {p.config} for {p.dataset}: spacing {spacing}, patch {fmt(p.patch)}, batch "
            f"{p.batch_size}, {len(p.strides)} stages (pooling {p.pools}), normalization "
            f"{norm}; about {p.estimate_gib:.2g} of {p.gpu_memory_gib:g} GiB")


def visible_gpu_gib() -> float | None:
    """Total memory of the first visible NVIDIA GPU, asked of nvidia-smi (no torch import needed);
    None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return float(out.split()[0]) / 1024  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
