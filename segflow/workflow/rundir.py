"""The run directory: `runs/<workflow>/<timestamp>/`, the `latest` link beside it, and finding the
checkpoint that `--resume` names."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Callable

from segflow.workflow.errors import Issue, WorkflowError

RUNS_ROOT = Path("runs")


def slug(name: str) -> str:
    """A workflow name as one safe folder name: never "", "." or ".." (which would put runs into
    runs/ itself or beside it), never hidden."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._-").lower() or "workflow"


def new_run_dir(workflow_name: str, root: Path = RUNS_ROOT) -> Path:
    base = root / slug(workflow_name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"cannot make a new run directory under {base}")


def point_latest(run_dir: Path) -> None:
    """Point `runs/<workflow>/latest` at `run_dir`, so other workflows can name
    `runs/<workflow>/latest/checkpoints/best.pt`. Called once the run has something to load (its first
    checkpoint, or its successful end), not when it starts: a run that fails or is still running
    before then leaves `latest` on the previous usable run. Replaced atomically; skipped where the
    file system has no symbolic links."""
    base = run_dir.parent
    tmp = base / f".latest-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, base / "latest")
    except OSError:
        tmp.unlink(missing_ok=True)


def find_latest_checkpoint(workflow_name: str, root: Path = RUNS_ROOT) -> Path | None:
    """The newest `last.pt` among this workflow's own earlier runs (their workflow.resolved.json names
    it: two names can share a folder name), for `--resume auto`."""
    base = root / slug(workflow_name)
    runs = [p for p in base.glob("*") if p.is_dir() and not p.is_symlink() and _workflow_of(p) == workflow_name]
    return newest_checkpoint(runs)


def newest_checkpoint(run_dirs: list[Path]) -> Path | None:
    """The most recently written `last.pt` anywhere under these run directories."""
    found = sorted((ckpt for run in run_dirs for ckpt in run.glob("**/last.pt")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _workflow_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "workflow.resolved.json").read_text()).get("workflow")
    except (OSError, ValueError, AttributeError):
        return None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The segflow run directory a checkpoint lives in, if it lives in one."""
    for parent in checkpoint.resolve().parents:
        if (parent / "workflow.resolved.json").is_file():
            return parent
    return None


def resolve_resume(resume: str | None, workflow_name: str, log: Callable[[str], None],
                   run_dir: Path | None = None) -> Path | None:
    """The checkpoint `--resume` names: a file, a run directory's newest last.pt, or for `auto` the
    newest of this workflow's runs; with `--run-dir`, `auto` means that run directory's own."""
    if resume is None:
        return None
    if resume == "auto":
        found = newest_checkpoint([run_dir]) if run_dir is not None else find_latest_checkpoint(workflow_name)
        if found is None:
            where = f"in {run_dir}" if run_dir is not None else f"of '{workflow_name}' under {RUNS_ROOT}/"
            log(f"--resume auto: no earlier run {where}; starting fresh")
        return found
    path = Path(resume)
    if path.is_dir():  # a run directory: its newest last.pt
        path = newest_checkpoint([path]) or path
    if not path.is_file():
        raise WorkflowError([Issue("checkpoint_not_found", f"--resume {resume}: no such checkpoint file"
                                   + (" (the folder holds no last.pt)" if path.is_dir() else ""), path="--resume",
                                   hint="give a .pt file or a run directory, or --resume auto")])
    return path


def prepare_run_dir(run_dir: Path, *, resuming: bool, overwrite: bool, log: Callable[[str], None]) -> Path:
    """`--run-dir`: made when new. One that holds files is a resumed run's to go on with; a fresh run
    there would mix with the old one (its checkpoints, TensorBoard events, and `keep_last` deleting
    the new run's checkpoints for the old ones' higher numbers), so it is refused, or with
    `overwrite` the old contents are moved aside first."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resuming:
        if not overwrite:
            held = sorted(p.name for p in run_dir.iterdir())
            raise WorkflowError([Issue(
                "run_dir_not_empty", f"--run-dir {run_dir} already holds an earlier run ({', '.join(held[:4])}"
                + (", ..." if len(held) > 4 else "") + "); a fresh run there would mix with it", path="--run-dir",
                hint=f"resume it with --resume {run_dir}, choose another --run-dir, or add --overwrite to move "
                     "the old contents aside")])
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
        run_dir.rename(aside)
        log(f"--overwrite: the earlier contents of {run_dir} are now in {aside}")
    if run_dir.exists() and not run_dir.is_dir():
        raise WorkflowError([Issue("bad_run_dir", f"--run-dir {run_dir} is a file, not a folder", path="--run-dir",
                                   hint="name a folder (made if missing) for the run's files")])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkflowError([Issue("bad_run_dir", f"--run-dir {run_dir} cannot be made: {e.strerror or e}",
                                   path="--run-dir", hint="name a folder in a place you can write to")]) from None
    return run_dir


def environment_path(run_dir: Path) -> Path:
    """Where this attempt's environment record goes: environment.json for the first attempt, then
    environment.2.json, environment.3.json, ... for each resumed attempt, so none is lost."""
    path, attempt = run_dir / "environment.json", 1
    while path.exists():
        attempt += 1
        path = run_dir / f"environment.{attempt}.json"
    return path
