"""Runs a validated workflow: one node at a time, in dependency order, outputs handed along.

Kept small on purpose. Everything a node needs from the run arrives in its `RunContext`;
nothing is kept between two runs in one process.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from segflow.workflow import distributed, spec
from segflow.workflow.errors import Issue, NodeRunError, WorkflowError
from segflow.nodes.base import RunContext
from segflow.workflow.runinfo import environment_record

RUNS_ROOT = Path("runs")


@dataclass
class RunResult:
    run_dir: Path
    workflow: spec.Workflow
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> port -> value
    timings: dict[str, float] = field(default_factory=dict)


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


def _run_dir_of(checkpoint: Path) -> Path | None:
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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_workflow(path: str | Path, *, sets=(), device: str | None = None, run_dir: str | Path | None = None,
                 resume: str | None = None, until: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> RunResult:
    """Validate `path`, make the run directory and run the nodes (up to `until`, if given)."""
    wf = spec.load(path, sets=sets)
    if until is not None and until not in wf.nodes:
        raise WorkflowError([Issue("unknown_node", f"--until {until!r}: no node of that name", "--until",
                                   hint=spec.suggest(until, wf.nodes) or f"nodes: {', '.join(wf.nodes)}")])
    for warning in wf.warnings if distributed.is_main() else ():  # once per job, not once per rank
        log(warning.format())
    order = wf.order(until)
    preflight(wf, order, device)
    # Under torchrun every rank runs this function; only rank 0 makes and writes the run directory
    # and logs, the others learn the directory (and the checkpoint to resume) from it.
    in_group = distributed.setup(_training_device(wf, order, device))
    try:
        return _run(wf, path, order, device, run_dir, resume, progress, log, in_group)
    finally:
        distributed.teardown()


def _run(wf: spec.Workflow, path, order: list[str], device, run_dir, resume, progress, log, in_group: bool) -> RunResult:
    main = distributed.is_main()
    if main:
        checkpoint = resolve_resume(resume, wf.name, log)
        if run_dir is not None:
            out = Path(run_dir)
            out.mkdir(parents=True, exist_ok=True)
        elif checkpoint is not None and (started_in := _run_dir_of(checkpoint)) is not None:
            out = started_in  # a resumed run goes on writing where it started
        else:
            out = new_run_dir(wf.name)
        _write_json(out / "workflow.resolved.json", wf.resolved())
        env = environment_record(device)
        if in_group:
            env["distributed"] = {"world_size": distributed.world_size(), "backend": _backend()}
        _write_json(out / "environment.json", env)
    else:
        checkpoint = out = None
        log = _quiet
    out, checkpoint = distributed.broadcast_object((out, checkpoint))

    ctx = RunContext(run_dir=out, workflow_name=wf.name, workflow_file=Path(path), device=device,
                     resume=str(checkpoint) if checkpoint else None, progress=progress and main, log=log)
    result = RunResult(out, wf)
    # Network weights are drawn when their node runs, before any Trainer seeds for itself.
    from segflow.training.device import seed_everything

    seed_everything(wf.seed, deterministic=False)
    # Ranks other than 0 stop after the last Trainer; what follows (prediction, evaluation, export)
    # runs once, on rank 0, with no collectives.
    last_shared = max((i for i, n in enumerate(order) if wf.nodes[n].cls.family == "training"), default=-1)
    if in_group and not main:
        order = order[: last_shared + 1]
    if main:
        log(f"segflow: running '{wf.name}' ({len(order)} nodes) -> {out}"
            + (f" on {distributed.world_size()} processes" if in_group else ""))
    for step, name in enumerate(order, 1):
        node_spec = wf.nodes[name]
        inputs = {w.target_port: result.outputs[w.source][w.source_port] for w in wf.inputs_of(name)
                  if w.source in result.outputs}
        log(f"[{step}/{len(order)}] {name} ({node_spec.type})")
        started = time.perf_counter()
        try:
            node = node_spec.cls(name, node_spec.config, ctx)
            outputs = node.run(**inputs) or {}
        except (KeyboardInterrupt, WorkflowError):
            raise
        except Exception as e:
            raise NodeRunError(name, node_spec.type, e) from e
        missing = [p.name for p in node_spec.cls.outputs if p.name not in outputs]
        if missing:
            raise NodeRunError(name, node_spec.type, RuntimeError(f"produced no value for output(s) {missing}"))
        result.outputs[name] = outputs
        result.timings[name] = time.perf_counter() - started
        log(f"[{step}/{len(order)}] {name} done in {result.timings[name]:.1f}s")
    if main:
        _write_json(out / "timings.json", result.timings)
    return result


def _quiet(message: str) -> None:
    """The log of ranks other than 0: one copy of each line is enough."""


def _backend() -> str:
    import torch.distributed as dist

    return dist.get_backend()


def _training_device(wf: spec.Workflow, order: list[str], device: str | None) -> str:
    """The device the Trainer will use (--device first), which picks the process-group backend."""
    if device:
        return device
    for name in order:
        node = wf.nodes[name]
        if node.cls.family == "training" and isinstance(getattr(node.config, "device", None), str):
            return node.config.device
    return "auto"


def preflight(wf: spec.Workflow, order: list[str], device: str | None) -> None:
    """Checks of the world (paths exist, devices are there) before any node starts work."""
    issues = []
    for name in order:
        node_spec = wf.nodes[name]
        for f in node_spec.cls.preflight(node_spec.config, device):
            issues.append(wf.issue(f, node_spec))
    if any(i.severity == "error" for i in issues):
        raise WorkflowError(issues)
