"""`segflow package RUN_DIR -o model.segflow`: a trained run made into a deliverable model.

What the run directory holds decides the package: `workflow.resolved.json` (which network, loader and
Predictor settings), `dataset_info.json` (channels, classes, label coding), `metrics.json` (which weights
the run handed on, and the validation figures) and the checkpoint. The network is rebuilt from its node
config, the weights are loaded into it and saved plain, and it is exported to torch.export and ONNX
(each parity-checked against eager PyTorch, as ModelExport does).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from segflow.packaging import contents as pkg
from segflow.packaging.contents import PackageError
from segflow.packaging.metadata import build_metadata
from segflow.workflow.files import write_json

# the loader settings a prediction repeats (everything that shapes what the network sees)
PREPROCESSING = ("spatial_dims", "image_size", "size_mode", "normalization", "ct_window", "intensity_mean",
                 "intensity_std", "target_spacing", "num_classes", "channel_normalization")
PREDICTOR_DEFAULTS = {"tta": False, "overlap": 0.5, "blend_mode": "gaussian", "sw_batch_size": 4}


def _nodes_of(resolved: dict) -> dict[str, dict]:
    return {n["name"]: n for n in resolved.get("nodes", [])}


def _source_of(wf, node: str, port: str) -> str | None:
    return next((w.source for w in wf.inputs_of(node) if w.target_port == port), None)


def trained_parts(run_dir: Path) -> dict[str, Any]:
    """The Trainer's network, loader and (when there is one) Predictor node of the run's workflow."""
    from segflow.workflow import spec

    resolved = pkg.read_json(run_dir / "workflow.resolved.json", f"{run_dir / 'workflow.resolved.json'} is missing: "
                             "not a segflow run directory (segflow run writes it)")
    # the record marks auto-wired links ("auto": true), which a workflow file does not take
    links = [{k: v for k, v in link.items() if k != "auto"} for link in resolved.get("links", [])]
    wf = spec.loads(json.dumps({**resolved, "links": links}), file=str(run_dir / "workflow.resolved.json"))
    trainers = [n for n, s in wf.nodes.items() if s.type == "Trainer"]
    if not trainers:
        raise PackageError(f"{run_dir}: the run's workflow has no Trainer; package a run that trained a model")
    trainer = trainers[-1]
    network = _source_of(wf, trainer, "model")
    while network is not None and wf.nodes[network].cls.family != "networks":  # through a CheckpointLoader
        network = _source_of(wf, network, "model")
    if network is None:
        raise PackageError(f"{run_dir}: cannot tell which network node the Trainer '{trainer}' trained")
    predictor = next((n for n in wf.order() if wf.nodes[n].type == "Predictor"), None)
    nodes = _nodes_of(resolved)
    return {"workflow": resolved, "trainer": trainer, "network": nodes[network],
            "loader": nodes[_source_of(wf, trainer, "train_loader")],
            "predictor": nodes[predictor]["config"] if predictor else dict(PREDICTOR_DEFAULTS)}


def chosen_checkpoint(run_dir: Path, trainer_cfg: dict) -> tuple[Path, str, dict]:
    """(checkpoint file, 'best'/'last', metrics.json) of the weights the run handed on."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    chosen = (metrics.get("output_model") or {}).get("weights") or "last"
    checkpoints = run_dir / trainer_cfg.get("checkpoint_dir", "checkpoints")
    path = checkpoints / f"{chosen}.pt"
    if not path.is_file():
        raise PackageError(f"{path} is missing: the run's {chosen} weights (metrics.json output_model) are needed")
    return path, chosen, metrics


def make_package(run_dir: str | Path, out: str | Path, *, as_zip: bool | None = None, license: str | None = None,
                 authors: list[str] | None = None, model_version: str = "1.0.0", checkpoint: Path | None = None,
                 exports: bool = True, log: Callable[[str], None] = print) -> Path:
    """Write the package of `run_dir` to `out`. `checkpoint`: these weights instead of the ones the run
    handed on; `exports` off: weights only (what `segflow predict RUN_DIR` makes for itself)."""
    run_dir, out = Path(run_dir), Path(out)
    parts = trained_parts(run_dir)
    dataset = pkg.read_json(run_dir / "dataset_info.json", f"{run_dir / 'dataset_info.json'} is missing: the run "
                            "predates dataset_info.json; run it again to package it")
    trainer_cfg = _nodes_of(parts["workflow"])[parts["trainer"]]["config"]
    chosen_file, chosen, metrics = chosen_checkpoint(run_dir, trainer_cfg) if checkpoint is None else (
        Path(checkpoint), Path(checkpoint).stem, {})
    checkpoint = chosen_file
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        net = _network_with_weights(parts["network"], checkpoint, staging / pkg.WEIGHTS, log)
        roi = _window(parts["predictor"], dataset)
        exports = _exports(net, (dataset["in_channels"], *roi), staging, log) if exports else []
        inference = _inference(parts, dataset, run_dir)
        write_json(staging / pkg.INFERENCE, inference, indent=1)
        if "postprocessing" in inference:
            shutil.copyfile(postprocessing_rule(parts, run_dir), staging / pkg.POSTPROCESSING)
        shutil.copyfile(run_dir / "workflow.resolved.json", staging / pkg.TRAINING)
        files = {f.name: pkg.sha256(f) for f in sorted(staging.iterdir()) if f.is_file()}
        meta = build_metadata(parts, dataset, inference, metrics, chosen, exports, files, roi,
                              license=license, authors=authors, model_version=model_version)
        write_json(staging / pkg.METADATA, meta, indent=1)
        as_zip = out.suffix == ".zip" if as_zip is None else as_zip
        written = pkg.finish(staging, out, as_zip)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"package: {written} ({parts['network']['type']}, {chosen} weights from {checkpoint}; "
        f"{', '.join(e['file'] for e in exports if e['file']) or 'no exports'})")
    return written


def _network_with_weights(node: dict, checkpoint: Path, weights_out: Path, log):
    from segflow.inference.weights import load_weights
    from segflow.networks.factory import build_network
    from segflow.nodes import registry
    from segflow.training.checkpoint import atomic_save

    config = registry.get(node["type"]).Config.model_validate(node["config"])
    net = build_network(node["type"], config)
    load_weights(net, checkpoint, strict=True, log=log, who="segflow package")
    net.eval()
    atomic_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights_out)
    return net


def _window(predictor: dict, dataset: dict) -> tuple[int, ...]:
    roi = predictor.get("roi_size")
    dims = int(dataset["spatial_dims"])
    if roi is None:
        return tuple(int(s) for s in dataset["patch_size"])
    return (int(roi),) * dims if isinstance(roi, int) else tuple(int(s) for s in roi)


def _exports(net, input_shape: tuple[int, ...], staging: Path, log) -> list[dict]:
    """torch.export and ONNX files, each parity-checked; ONNX with free spatial axes when the network
    takes another size (checked at the window plus one size step per axis), else at the window's size.
    A network that does not export is packaged without that file, and the metadata says why."""
    from segflow.export.formats import export_model
    from segflow.networks.description import description_of

    described = description_of(net)
    steps = described.size_divisors or (described.size_divisor,) * (len(input_shape) - 1)
    other = None if described.fixed_size else tuple(s + d for s, d in zip(input_shape[1:], steps))
    reports = []
    for fmt, name in (("torch_export", pkg.PROGRAM), ("onnx", pkg.ONNX)):
        attempts = [other, None] if fmt == "onnx" and other is not None else [None]
        why = None
        for size in attempts:
            try:
                report = export_model(net, fmt, staging / name, input_shape, log=log, other_size=size)
                reports.append({**report, "file": name, "path": name})
                break
            except ValueError as e:
                why = str(e)
        else:
            log(f"package: {fmt} export failed ({why}); packaged without {name}")
            reports.append({"format": fmt, "file": None, "error": why})
    return reports


def _inference(parts: dict, dataset: dict, run_dir: Path) -> dict:
    loader = parts["loader"]["config"]
    local = ("output_dir", "device", "postprocessing_file")  # the run's own places; the package brings its own
    predictor = {k: v for k, v in parts["predictor"].items() if k not in local}
    inference = {
        "network": {"type": parts["network"]["type"], "config": parts["network"]["config"]},
        "preprocessing": {k: loader[k] for k in PREPROCESSING if k in loader},
        "predictor": predictor,
        "dataset": {k: dataset[k] for k in ("in_channels", "num_classes", "spatial_dims", "spacing", "class_names",
                                            "patch_size", "label_values", "regions", "regions_class_order",
                                            "ignore_label") if k in dataset},
    }
    rule = postprocessing_rule(parts, run_dir)
    if rule is not None:  # applied as the run's Predictor applied it (postprocessing auto)
        inference["postprocessing"] = json.loads(rule.read_text())
    return inference


def postprocessing_rule(parts: dict, run_dir: Path) -> Path | None:
    """The postprocessing.json the run's Predictor applied with `auto`: the one it named, else the Trainer's."""
    named = parts["predictor"].get("postprocessing_file")
    if parts["predictor"].get("postprocessing", "auto") != "auto":
        return None
    rule = Path(named) if named else run_dir / "postprocessing.json"
    return rule if rule.is_file() else None


def open_model(model: str | Path, scratch: Path | None = None, log: Callable[[str], None] = print):
    """A package from what `segflow predict` was given: a package (folder or zip), a run directory (its
    chosen weights), or a checkpoint inside a run directory (those weights)."""
    from segflow.packaging.contents import METADATA, open_package
    from segflow.workflow.rundir import run_dir_of

    path = Path(model)
    if path.is_dir() and (path / METADATA).is_file() or path.is_file() and path.suffix == ".zip":
        return open_package(path, scratch)
    checkpoint = None
    if path.is_file():
        run_dir = run_dir_of(path)
        if run_dir is None:
            raise PackageError(f"{path}: a checkpoint outside a run directory; give the run directory or a package "
                               "(`segflow package RUN_DIR -o model.segflow`)")
        checkpoint, path = path, run_dir
    if not (path / "workflow.resolved.json").is_file():
        raise PackageError(f"{path}: neither a segflow package (metadata.json), nor a run directory "
                           "(workflow.resolved.json), nor a checkpoint in one")
    where = Path(tempfile.mkdtemp(prefix="segflow-predict-", dir=scratch))
    made = make_package(path, where / "model", checkpoint=checkpoint, exports=False, log=lambda _m: None)
    return open_package(made)
