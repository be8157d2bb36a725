"""`segflow predict MODEL -i INPUT_DIR -o OUTPUT_DIR`: every image of a plain folder, predicted as the
training run's own Predictor predicts (the same loader code reads and normalises each case, the same
Predictor code windows, averages and writes it back in the input's format and geometry).

Cases are taken one at a time: one that cannot be read, or has the wrong channels or dimensions, is
listed with the reason and nothing is written for it; the rest are predicted. A case whose output
exists is skipped unless `overwrite`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segflow.packaging import contents as pkg
from segflow.packaging.contents import Package


@dataclass
class Outcome:
    predicted: list[tuple[str, Path, float]] = field(default_factory=list)  # (case, file, seconds)
    skipped: list[tuple[str, Path]] = field(default_factory=list)  # outputs already there
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, why)
    startup_seconds: float = 0.0  # opening the package and building the network

    def summary(self) -> str:
        done = len(self.predicted)
        per_case = sum(s for _, _, s in self.predicted) / done if done else 0.0
        lines = [f"predict: {done} case(s) predicted ({per_case:.2f} s per case, start-up "
                 f"{self.startup_seconds:.2f} s), {len(self.skipped)} skipped (output exists; --overwrite to redo), "
                 f"{len(self.failed)} failed"]
        lines += [f"  failed: {case}: {why}" for case, why in self.failed]
        return "\n".join(lines)


class OnnxNetwork:
    """The package's ONNX file run by onnxruntime, callable like the torch network inside the Predictor's
    sliding windows (tensor in, logits tensor out, on the input's device)."""

    def __init__(self, path: Path, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)

    def to(self, device: Any) -> OnnxNetwork:
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, x):
        import torch

        out = self.session.run(None, {"image": x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def network_of(package: Package, backend: str, device: str):
    """The eager network with the package's weights, or its ONNX file under onnxruntime."""
    if backend == "onnx":
        onnx = package.file(pkg.ONNX)
        if onnx is None:
            raise pkg.PackageError(f"{package.source}: the package has no {pkg.ONNX} (see its metadata.json "
                                   "exports for why); predict with --backend torch")
        return OnnxNetwork(onnx, device)
    from segflow.inference.weights import load_weights
    from segflow.networks.factory import build_network
    from segflow.nodes import registry

    spec = package.inference["network"]
    net = build_network(spec["type"], registry.get(spec["type"]).Config.model_validate(spec["config"]))
    return load_weights(net, package.root / pkg.WEIGHTS, strict=True, log=lambda _m: None, who="segflow predict")


def configs(package: Package, input_dir: Path, output_dir: Path, device: str | None, tta: bool | None,
            probabilities: bool):
    """The loader and Predictor configs of the training run, pointed at the folder and the output."""
    from segflow.nodes.data import MedicalSegmentationLoaderConfig
    from segflow.nodes.inference import PredictorConfig

    inf = package.inference
    loader = MedicalSegmentationLoaderConfig(**{
        **inf["preprocessing"], "data_dir": str(input_dir), "subset": "test", "layout": "images", "cache": "none",
        "num_workers": 0, "augmentation": False, "num_classes": inf["dataset"]["num_classes"],
        # regions and the ignore label as the training data declared them (in its dataset.json or the loader)
        **{k: inf["dataset"][k] for k in ("regions", "regions_class_order", "ignore_label") if k in inf["dataset"]}})
    settings = {**inf["predictor"], "output_dir": str(output_dir.resolve()), "save_probabilities": probabilities}
    rule = package.file(pkg.POSTPROCESSING)
    if rule is not None and settings.get("postprocessing", "auto") == "auto":
        settings["postprocessing_file"] = str(rule)  # what "auto" applied in the training run
    if device:
        settings["device"] = device
    if tta is not None:
        settings["tta"] = ["flip"] if tta else False
    return loader, PredictorConfig(**settings)


def expected_output(case, predictor_cfg, output_dir: Path) -> Path:
    from segflow.inference.writers import SUFFIX, source_geometry

    fmt = predictor_cfg.output_format
    if fmt == "auto":
        fmt = source_geometry(case.images[0]).format
    return output_dir / f"{case.case_id}{SUFFIX[fmt]}"


def predict_folder(package: Package, input_dir: str | Path, output_dir: str | Path, *, device: str | None = None,
                   tta: bool | None = None, probabilities: bool = False, overwrite: bool = False,
                   backend: str = "torch", log: Callable[[str], None] = print, progress: bool = True) -> Outcome:
    from segflow.data.layouts import find_images

    started = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    outcome = Outcome()
    loader_cfg, predictor_cfg = configs(package, input_dir, output_dir, device, tta, probabilities)
    model = network_of(package, backend, predictor_cfg.device)
    layout, problems = find_images(input_dir)
    outcome.failed += problems
    outcome.startup_seconds = time.perf_counter() - started
    from segflow.inference.predict import case_bar

    bar = case_bar(len(layout.cases), "segflow predict") if progress else None
    for case in layout.cases:
        _one_case(package, case, layout, loader_cfg, predictor_cfg, model, output_dir, overwrite, outcome)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return outcome


def _one_case(package: Package, case, layout, loader_cfg, predictor_cfg, model, output_dir: Path, overwrite: bool,
              outcome: Outcome) -> None:
    started = time.perf_counter()
    try:
        target = expected_output(case, predictor_cfg, output_dir)
        if target.exists() and not overwrite:
            outcome.skipped.append((case.case_id, target))
            return
        path = _predict_case(package, case, layout, loader_cfg, predictor_cfg, model, output_dir)
    except Exception as e:  # noqa: BLE001 - a case that fails is listed, the others go on
        outcome.failed.append((case.case_id, f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)))
        return
    outcome.predicted.append((case.case_id, path, time.perf_counter() - started))


def _predict_case(package: Package, case, layout, loader_cfg, predictor_cfg, model, output_dir: Path) -> Path:
    from segflow.data.layouts import Layout
    from segflow.data.loader import build_loaders
    from segflow.inference.predict import predict
    from segflow.nodes.base import RunContext

    dataset = package.inference["dataset"]
    channels = package.in_channels
    if len(case.images) > 1 and len(case.images) != channels:
        raise ValueError(f"{len(case.images)} channel files, but the model takes {channels} "
                         f"({', '.join(p.name for p in case.images)})")
    one = Layout("images", layout.root, [case], class_names=list(dataset["class_names"]),
                 label_values=tuple(dataset["label_values"]) or None)
    _, loader, info = build_loaders(loader_cfg, log=lambda _m: None, layout=one)
    if info.in_channels != channels or info.spatial_dims != package.spatial_dims:
        raise ValueError(f"{case.images[0]} is {info.spatial_dims}-D with {info.in_channels} channel(s); the model "
                         f"takes {package.spatial_dims}-D images with {channels} channel(s)")
    ctx = RunContext(run_dir=output_dir, workflow_name="predict", progress=False, log=lambda _m: None)
    result = predict(predictor_cfg, ctx, "predict", model, loader, info)
    return Path(result.records[0].prediction_path)
