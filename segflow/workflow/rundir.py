"""The run directory: `runs/<workflow>/<timestamp>/`, the `latest` link beside it, and finding the
checkpoint that `--resume` names."""
from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Callable

from segflow.workflow.errors import Issue, WorkflowError

RUNS_ROOT = Path("runs")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("_").lower() or "workflow"


def new_run_dir(workflow_name: str, root: Path = RUNS_ROOT) -> Path:
    base = root / slug(workflow_name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        _point_latest(base, candidate.name)
        return candidate
    raise RuntimeError(f"cannot make a new run directory under {base}")


def _point_latest(base: Path, name: str) -> None:
    """Keep `runs/<workflow>/latest` pointing at the newest run, so other workflows can name
    `runs/<workflow>/latest/checkpoints/best.pt`. Replaced atomically; skipped where the file
    system has no symbolic links."""
    tmp = base / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name, target_is_directory=True)
        os.replace(tmp, base / "latest")
    except OSError:
        tmp.unlink(missing_ok=True)


def find_latest_checkpoint(workflow_name: str, root: Path = RUNS_ROOT) -> Path | None:
    """The newest `last.pt` among this workflow's earlier runs, for `--resume auto`."""
    runs = [p for p in (root / slug(workflow_name)).glob("*") if p.is_dir() and not p.is_symlink()]
    found = sorted((ckpt for run in runs for ckpt in run.glob("**/last.pt")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The segflow run directory a checkpoint lives in, if it lives in one."""
    for parent in checkpoint.resolve().parents:
        if (parent / "workflow.resolved.json").is_file():
            return parent
    return None


def resolve_resume(resume: str | None, workflow_name: str, log: Callable[[str], None]) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = find_latest_checkpoint(workflow_name)
        if found is None:
            log(f"--resume auto: no earlier run of '{workflow_name}' under {RUNS_ROOT}/; starting fresh")
        return found
    path = Path(resume)
    if not path.is_file():
        raise WorkflowError([Issue("checkpoint_not_found", f"--resume {resume}: no such checkpoint file",
                                   path="--resume", hint="give a path to a .pt file, or --resume auto")])
    return path
