"""`segflow run | validate | plan | package | predict | inspect | schema | nodes | graph`.

`validate`, `plan`, `schema`, `nodes` and `graph` never import torch or monai (a test checks), so
checking workflows in CI is fast. Only `run` and `inspect` (which builds the network) load the heavy stack.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from segflow import __version__
from segflow.workflow.errors import Issue, NodeRunError, WorkflowError


def _print_issues(issues: list[Issue], fmt: str, out=None) -> None:
    out = out or sys.stdout
    for issue in issues:
        print(issue.as_github() if fmt == "github" else issue.format(), file=out)


def cmd_validate(args) -> int:
    from segflow.workflow import spec

    failed = 0
    report = []
    for path in args.workflows:
        try:
            wf = spec.load(path)
            issues = list(wf.warnings)
            if args.check_paths:
                from segflow.workflow.executor import preflight

                try:
                    # Paths only: the machine validating need not be the one that will train,
                    # so devices are checked as if the run said --device cpu, and memory not at all.
                    issues += preflight(wf, list(wf.nodes), "cpu", paths_only=True)
                except WorkflowError as e:
                    issues += e.issues
        except WorkflowError as e:
            issues = e.issues
        bad = any(i.severity == "error" for i in issues)
        failed += bad
        if args.format == "json":
            report.append({"file": str(path), "valid": not bad, "issues": [i.as_dict() for i in issues]})
        else:
            _print_issues(issues, args.format)
            if args.format == "text":
                errors = sum(i.severity == "error" for i in issues)
                print(f"{path}: {'invalid, ' + str(errors) + ' error(s)' if bad else 'valid'}"
                      + (f", {len(issues) - errors} warning(s)" if len(issues) > errors else ""))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


# torchrun's own flags that `segflow run` passes through, so multi-node jobs start as torchrun documents
LAUNCH_FLAGS = ("nnodes", "node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "master_addr", "master_port")


def launch(args) -> int:
    """`segflow run WF --nproc-per-node N`: start N workers of `python -m segflow run WF ...` through
    torch.distributed.run (torchrun's entry point), which also stops them all when one fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    launcher = [f"--nproc-per-node={args.nproc_per_node}"]
    given = {k: getattr(args, k) for k in LAUNCH_FLAGS if getattr(args, k) is not None}
    launcher += [f"--{k.replace('_', '-')}={v}" for k, v in given.items()]
    if not ({"nnodes", "rdzv_endpoint", "master_addr"} & given.keys()):
        launcher.append("--standalone")  # one machine: a free local port, no rendezvous set-up
    worker = ["run", args.workflow]
    for item in args.set or ():
        worker += ["--set", item]
    for flag in ("device", "run_dir", "resume", "until"):
        if getattr(args, flag) is not None:
            worker += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    worker += ["--no-progress"] * args.no_progress + ["--debug"] * args.debug + ["--overwrite"] * args.overwrite
    try:
        torchrun([*launcher, "-m", "segflow", *worker])
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"segflow: the distributed job stopped: rank {rank} exited with code {failure.exitcode} "
              f"(its error is printed above); the other ranks were stopped", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from segflow.workflow import distributed

    if args.nproc_per_node and not distributed.launched():
        return launch(args)
    from segflow.workflow.executor import run_workflow

    who = f"segflow [rank {distributed.rank()}]" if distributed.launched() else "segflow"

    try:
        result = run_workflow(args.workflow, sets=args.set or (), device=args.device, run_dir=args.run_dir,
                              resume=args.resume, until=args.until, progress=not args.no_progress,
                              overwrite=args.overwrite)
    except WorkflowError as e:
        _print_issues(e.issues, "text", sys.stderr)
        return 1
    except NodeRunError as e:
        print(f"{who}: {e}", file=sys.stderr)
        if args.debug:
            import traceback

            traceback.print_exception(e.__cause__)
        else:
            print(f"{who}: run again with --debug for the full traceback", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\n{who}: interrupted; {_how_to_resume(args, getattr(e, 'run_dir', None))}", file=sys.stderr)
        return 130
    if distributed.is_main():
        print(f"segflow: finished; run directory {result.run_dir}")
    return 0


def _how_to_resume(args, run_dir: Path | None) -> str:
    """The command that continues the interrupted run: the same file, overrides and device, resuming
    from this run's own newest checkpoint (written atomically, so it holds a finished epoch)."""
    from segflow.workflow.rundir import newest_checkpoint

    checkpoint = newest_checkpoint([run_dir]) if run_dir is not None else None
    if checkpoint is None:
        return "no checkpoint was written yet, so there is nothing to resume" + (
            f" (run directory {run_dir})" if run_dir is not None else "")
    words = ["segflow", "run", args.workflow]
    for item in args.set or ():
        words += ["--set", item]
    for flag in ("device", "until"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", getattr(args, flag)]
    words += ["--resume", str(checkpoint)]
    return f"continue with `{shlex.join(words)}`"


def cmd_plan(args) -> int:
    from segflow.planning.command import run

    return run(args)


def cmd_schema(args) -> int:
    from segflow.workflow.files import atomic_write_text
    from segflow.workflow.schema import DEFAULT_PATH, render

    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output or DEFAULT_PATH)
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date; run `segflow schema` to regenerate it", file=sys.stderr)
            return 1
        print(f"{path} is current")
        return 0
    atomic_write_text(path, text)
    print(f"wrote {path}")
    return 0


def cmd_nodes(args) -> int:
    from segflow.nodes import registry
    from segflow.workflow import catalogue

    if args.format == "markdown":
        sys.stdout.write(catalogue.markdown())
        return 0
    if args.type is None:
        print(catalogue.summary())
        return 0
    cls = registry.resolve(args.type)
    if cls is None:
        from segflow.workflow.spec import suggest

        print(f"unknown node type {args.type!r}. {suggest(args.type, registry.all_types())}".rstrip(), file=sys.stderr)
        return 1
    print(catalogue.describe(cls))
    return 0


def cmd_inspect(args) -> int:
    from segflow.workflow import spec

    try:
        wf = spec.load(args.workflow, sets=args.set or ())
        node = _network_node(wf, args.node)
    except WorkflowError as e:
        _print_issues(e.issues, "text", sys.stderr)
        return 1
    from segflow.networks.factory import build_network
    from segflow.networks.inspection import optimizer_views, render

    model = build_network(node.type, node.config)  # on the CPU, from the config alone
    users = [wf.nodes[name] for name in _model_users(wf, node.name)]
    views, errors = optimizer_views(model, [(user.name, user.config) for user in users])
    if errors:
        _print_issues([wf.config_issue(e, wf.nodes[name]) for name, e in errors], "text", sys.stderr)
        return 1
    print(render(node.name, node.config, model, views, args.depth, args.format))
    return 0


def _network_node(wf, name: str | None):
    """The network node `segflow inspect` shows: --node, or the workflow's only one."""
    from segflow.workflow import spec

    networks = [n for n, s in wf.nodes.items() if s.cls.family == "networks"]
    if (name is None and len(networks) == 1) or name in networks:
        return wf.nodes[name or networks[0]]
    listed = ", ".join(networks) or "none"
    if name is None:
        message, hint = f"the workflow has {len(networks)} network nodes", f"choose one with --node: {listed}"
    elif name in wf.nodes:
        message, hint = f"node {name!r} ({wf.nodes[name].type}) is not a network", f"network nodes: {listed}"
    else:
        message = f"--node {name!r}: no node of that name"
        hint = spec.suggest(name, wf.nodes) or f"network nodes: {listed}"
    raise WorkflowError([Issue("unknown_node", message, "--node", hint=hint, file=wf.file)])


def _model_users(wf, network: str) -> list[str]:
    """The Optimizer nodes whose model is this network's, directly or handed on by nodes that pass their
    model input on (CheckpointLoader, Trainer)."""
    holders, users = {network}, []
    for name in wf.order():  # sources before their targets
        cls = wf.nodes[name].cls
        if any(w.source in holders and w.target_port == "model" for w in wf.inputs_of(name)):
            if cls.family == "optim":
                users.append(name)
            elif any(out.passes == "model" for out in cls.outputs):
                holders.add(name)
    return users


def cmd_graph(args) -> int:
    from segflow.workflow import spec

    try:
        wf = spec.load(args.workflow)
    except WorkflowError as e:
        _print_issues(e.issues, "text", sys.stderr)
        return 1
    ident = {name: f"n{i}" for i, name in enumerate(wf.nodes)}
    if args.format == "mermaid":
        lines = ["flowchart LR"]
        lines += [f'    {ident[n]}["{n}<br/><i>{s.type}</i>"]' for n, s in wf.nodes.items()]
        for w in wf.wires:
            arrow = "-.->" if w.auto else "-->"
            lines.append(f"    {ident[w.source]} {arrow}|{w.source_port} to {w.target_port}| {ident[w.target]}")
    else:
        lines = ["digraph workflow {", "    rankdir=LR;", "    node [shape=box];"]
        lines += [f'    {ident[n]} [label="{n}\\n{s.type}"];' for n, s in wf.nodes.items()]
        for w in wf.wires:
            style = ", style=dashed" if w.auto else ""
            lines.append(f'    {ident[w.source]} -> {ident[w.target]} [label="{w.source_port} to {w.target_port}"{style}];')
        lines.append("}")
    print("\n".join(lines))
    return 0


def _device_option(text: str) -> str:
    """--device as torch names it (GPU:1 -> cuda:1), or argparse's usage error worded for people."""
    from segflow.nodes.base import canonical_device

    try:
        return canonical_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"device {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segflow", description="Medical image segmentation from JSON workflows.")
    parser.add_argument("--version", action="version", version=f"segflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run(sub)
    _add_validate_and_plan(sub)
    from segflow.packaging.command import add_parsers

    add_parsers(sub, _device_option)

    _add_reference_commands(sub)
    return parser


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="validate and run a workflow")
    p.add_argument("workflow")
    p.add_argument("--set", action="append", metavar="NODE.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--device", type=_device_option,
                   help="auto, cpu, cuda or cuda:N (gpu, gpu:N), mps (Apple GPUs); overrides every node's device")
    p.add_argument("--run-dir", help="write the run here instead of runs/<workflow>/<timestamp>/")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue from PATH (a checkpoint, or a run directory's newest last.pt), or with auto from "
                        "the newest last.pt of this workflow's runs (of --run-dir when given)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --run-dir: move an earlier run found there aside (to RUN_DIR.replaced-<time>) "
                        "instead of refusing to start")
    p.add_argument("--until", metavar="NODE", help="run only NODE and what it depends on")
    p.add_argument("--nproc-per-node", type=int, default=0,
                   help="train with N processes per machine (DistributedDataParallel, launched through torchrun)")
    for flag in LAUNCH_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", help="passed to torchrun with --nproc-per-node (see torchrun --help)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the full traceback when a node fails")
    p.set_defaults(func=cmd_run)


def _add_validate_and_plan(sub) -> None:
    p = sub.add_parser("validate", help="check workflow files without running them (no torch needed)")
    p.add_argument("workflows", nargs="+")
    p.add_argument("--format", choices=("text", "json", "github"), default="text")
    p.add_argument("--check-paths", action="store_true", help="also check that input files and folders exist")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="derive a training workflow from a dataset with nnU-Net's rules (no torch needed)")
    p.add_argument("data_dir", help="dataset folder (MSD, nnU-Net v2 or images/ + masks/ layout)")
    p.add_argument("--config", choices=("3d_fullres", "2d"), help="default: 3d_fullres for volumes, 2d for images")
    p.add_argument("-o", "--output", help="workflow file to write (default: workflows/<dataset>_<config>.json)")
    p.add_argument("--force", action="store_true", help="replace an existing workflow file")
    p.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="GPU memory the patch and batch must fit (default: the visible GPU's, else 24)")
    p.add_argument("--epochs", type=int, default=1000, help="training epochs (default 1000, as nnU-Net)")
    p.add_argument("--layout", choices=("auto", "msd", "nnunet", "folder"), default="auto")
    p.add_argument("--fingerprint", metavar="FILE",
                   help="where the fingerprint is kept (default: DATA_DIR/.segflow_plan/fingerprint.json)")
    p.add_argument("--explain", action="store_true", help="print why each value was chosen")
    p.add_argument("--dry-run", action="store_true", help="plan and print, but write no workflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_plan)


def _add_reference_commands(sub) -> None:
    """schema, nodes, graph and inspect: what a workflow is made of."""
    p = sub.add_parser("schema", help="write the workflow JSON Schema")
    p.add_argument("-o", "--output", help="path, or - for stdout (default: schemas/workflow.schema.json)")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from the registry")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("nodes", help="list node types, or describe one")
    p.add_argument("type", nargs="?")
    p.add_argument("--format", choices=("text", "markdown"), default="text")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("graph", help="print a workflow's wired graph")
    p.add_argument("workflow")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("inspect", help="show a workflow's network: module tree, parameter counts, named parts for "
                                       "the Optimizer's freeze and param_groups (built on the CPU; no data loaded)")
    p.add_argument("workflow")
    p.add_argument("--node", help="the network node (default: the workflow's only one)")
    p.add_argument("--depth", type=int, default=3, metavar="N", help="module levels shown (default 3; 0: all)")
    p.add_argument("--set", action="append", metavar="NODE.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_inspect)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `segflow graph wf.json | head`: the reader has gone, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush of stdout at exit would raise again
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
