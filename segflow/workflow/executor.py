"""Runs a validated workflow: one node at a time, in dependency order, outputs handed along.

Kept small on purpose. Everything a node needs from the run arrives in its `RunContext`;
nothing is kept between two runs in one process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segflow.nodes.base import RunContext
from segflow.workflow import distributed, spec
from segflow.workflow.errors import ConfigValueError, Issue, NodeRunError, RunInterrupted, WorkflowError
from segflow.workflow.files import write_json
from segflow.workflow.rundir import (
    environment_path,
    new_run_dir,
    point_latest,
    prepare_run_dir,
    resolve_resume,
    run_dir_of,
)
from segflow.workflow.runinfo import environment_record


@dataclass
class RunResult:
    run_dir: Path
    workflow: spec.Workflow
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> port -> value
    timings: dict[str, float] = field(default_factory=dict)


def run_workflow(path: str | Path, *, sets=(), device: str | None = None, run_dir: str | Path | None = None,
                 resume: str | None = None, until: str | None = None, progress: bool = True,
                 overwrite: bool = False, log: Callable[[str], None] = print) -> RunResult:
    """Validate `path`, make the run directory and run the nodes (up to `until`, if given).

    `overwrite`: a `run_dir` that holds an earlier run is moved aside instead of refused."""
    wf = spec.load(path, sets=sets)
    if until is not None and until not in wf.nodes:
        raise WorkflowError([Issue("unknown_node", f"--until {until!r}: no node of that name", "--until",
                                   hint=spec.suggest(until, wf.nodes) or f"nodes: {', '.join(wf.nodes)}")])
    for warning in wf.warnings if distributed.is_main() else ():  # once per job, not once per rank
        log(warning.format())
    order = wf.order(until)
    for warning in preflight(wf, order, device) if distributed.is_main() else ():
        log(warning.format())
    # Under torchrun every rank runs this function; only rank 0 makes and writes the run directory
    # and logs, the others learn the directory (and the checkpoint to resume) from it.
    in_group = distributed.setup(_training_device(wf, order, device))
    try:
        fresh = False  # a new runs/<workflow>/<timestamp>: `latest` moves to it once it is usable (rank 0)
        if distributed.is_main():
            out, checkpoint, fresh = _open_run_dir(wf, device, run_dir, resume, overwrite, in_group, log)
        else:
            out, checkpoint, log = None, None, _quiet
        out, checkpoint = distributed.broadcast_object((out, checkpoint))
        ctx = RunContext(run_dir=out, workflow_name=wf.name, workflow_file=Path(path), device=device,
                         resume=str(checkpoint) if checkpoint else None, progress=progress and distributed.is_main(),
                         log=log, on_usable=(lambda: point_latest(out)) if fresh else None)
        status = "FAILED"
        try:
            result = _run_nodes(wf, order, ctx, in_group)
            ctx.mark_usable()  # a workflow without a Trainer (predict, evaluate): when it has run
            status = "FINISHED"
            return result
        except KeyboardInterrupt as e:
            status = "KILLED"
            raise RunInterrupted(out) from e
        finally:
            for tracker in ctx.trackers:
                tracker.end(status)
    finally:
        distributed.teardown()


def _open_run_dir(wf: spec.Workflow, device: str | None, run_dir, resume: str | None, overwrite: bool,
                  in_group: bool, log: Callable[[str], None]) -> tuple[Path, Path | None, bool]:
    """Rank 0: the run directory (made, or the resumed run's own) with its records, the checkpoint
    to resume from, and whether the directory is a new one under runs/<workflow>/."""
    checkpoint = resolve_resume(resume, wf.name, log, Path(run_dir) if run_dir is not None else None)
    fresh = False
    if run_dir is not None:  # going on in a folder that holds a run needs --resume (or --overwrite)
        out = prepare_run_dir(Path(run_dir), resuming=resume is not None, overwrite=overwrite, log=log)
    elif checkpoint is not None and (started_in := run_dir_of(checkpoint)) is not None:
        out = started_in  # a resumed run goes on writing where it started
    else:
        out, fresh = new_run_dir(wf.name), True
    write_json(out / "workflow.resolved.json", wf.resolved())
    env = environment_record(device)
    if checkpoint is not None:
        env["resumed_from"] = str(checkpoint)
    if in_group:
        env["distributed"] = {"world_size": distributed.world_size(), "backend": _backend()}
    write_json(environment_path(out), env)
    return out, checkpoint, fresh


def _run_nodes(wf: spec.Workflow, order: list[str], ctx: RunContext, in_group: bool) -> RunResult:
    main, log = distributed.is_main(), ctx.log
    result = RunResult(ctx.run_dir, wf)
    # Network weights are drawn when their node runs, before any Trainer seeds for itself.
    from segflow.training.device import seed_everything

    seed_everything(wf.seed, deterministic=False)
    # Ranks other than 0 stop after the last Trainer; what follows (prediction, evaluation, export)
    # runs once, on rank 0, with no collectives.
    last_shared = max((i for i, n in enumerate(order) if wf.nodes[n].cls.family == "training"), default=-1)
    if in_group and not main:
        order = order[: last_shared + 1]
    if main:
        log(f"segflow: running '{wf.name}' ({len(order)} nodes) -> {ctx.run_dir}"
            + (f" on {distributed.world_size()} processes" if in_group else ""))
    for step, name in enumerate(order, 1):
        log(f"[{step}/{len(order)}] {name} ({wf.nodes[name].type})")
        started = time.perf_counter()
        result.outputs[name] = _run_node(wf, name, result.outputs, ctx)
        result.timings[name] = time.perf_counter() - started
        log(f"[{step}/{len(order)}] {name} done in {result.timings[name]:.1f}s")
    if main:
        write_json(ctx.run_dir / "timings.json", result.timings)
    return result


def _run_node(wf: spec.Workflow, name: str, outputs: dict[str, dict[str, Any]], ctx: RunContext) -> dict[str, Any]:
    """One node's outputs, from the outputs of the nodes before it."""
    node_spec = wf.nodes[name]
    inputs = {w.target_port: outputs[w.source][w.source_port] for w in wf.inputs_of(name) if w.source in outputs}
    try:
        produced = node_spec.cls(name, node_spec.config, ctx).run(**inputs) or {}
    except (KeyboardInterrupt, WorkflowError):
        raise
    except ConfigValueError as e:  # a value of the file: reported where it is written
        raise WorkflowError([wf.config_issue(e, node_spec)]) from e
    except Exception as e:
        raise NodeRunError(name, node_spec.type, e) from e
    missing = [p.name for p in node_spec.cls.outputs if p.name not in produced]
    if missing:
        raise NodeRunError(name, node_spec.type, RuntimeError(f"produced no value for output(s) {missing}"))
    return produced


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


# Preflight codes about this machine's capacity, which say nothing of the machine that will run
# the workflow when `segflow validate --check-paths` checks it elsewhere (on CI)
CAPACITY_CODES = frozenset({"insufficient_memory"})


def preflight(wf: spec.Workflow, order: list[str], device: str | None, paths_only: bool = False) -> list[Issue]:
    """Checks of the world (paths exist, devices are there, batches fit in memory) before any node
    starts work; every node's problems together, raised when one is an error, else the warnings
    returned. `paths_only`: leave out CAPACITY_CODES."""
    issues = []
    for name in order:
        node_spec = wf.nodes[name]
        for f in node_spec.cls.preflight(node_spec.config, device):
            if not (paths_only and f.code in CAPACITY_CODES):
                issues.append(wf.issue(f, node_spec))
    if any(i.severity == "error" for i in issues):
        raise WorkflowError(issues)
    return issues
