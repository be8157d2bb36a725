"""ModelExport: config and ports. The export itself lives in `segflow.export.formats` (imported in `run`)."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.nodes.bounds import Voxels, Why
from segflow.nodes.networks import size_findings
from segflow.nodes.registry import register
from segflow.nodes.words import Choice
from segflow.workflow.errors import ConfigValueError

if TYPE_CHECKING:
    from segflow.networks.description import NetworkDescription

EXTENSIONS = {"torchscript": "pt", "onnx": "onnx", "torch_export": "pt2"}
_FORMAT_SYNONYMS = {"jit": "torchscript", "ts": "torchscript", "script": "torchscript", "torch_script": "torchscript",
                    "torchexport": "torch_export", "export": "torch_export", "pt2": "torch_export",
                    "exportedprogram": "torch_export", "exported_program": "torch_export"}


class ModelExportConfig(NodeConfig):
    aliases: ClassVar[dict[str, str]] = {"export_format": "format", "path": "output_path", "input_shape": "input_size",
                                         "opset_version": "opset", "atol": "tolerance"}

    format: Annotated[Literal["torchscript", "onnx", "torch_export"], Choice(_FORMAT_SYNONYMS)] = Field(
        "onnx", description="onnx (onnxruntime, TensorRT, ...); torch_export: a torch.export ExportedProgram "
                            "(.pt2; torch.export.load(path).module() runs it, AOTInductor compiles it); torchscript "
                            "(torch.jit.trace; deprecated by PyTorch, kept for older runtimes).")
    output_path: str | None = Field(None, description="Where to write the file; a relative path lives inside the run "
                                                      "directory. Default export/model.onnx, export/model.pt2 "
                                                      "(torch_export) or export/model.pt (torchscript).")
    input_size: list[Voxels] | None = Field(
        None, description="Spatial size of the sample input, e.g. [256, 256] or [96, 96, 96]. Default: the "
                          "loader's patch size (dataset_info), else the network's fixed img_size.")
    opset: Annotated[int, Field(le=23), Why("the newest opset torch's ONNX exporter writes")] = Field(
        18, ge=13, description="ONNX opset version: 18 to 23 are written as they are; 13 to 17 are converted down "
                               "from 18, or written by the older TorchScript-based exporter where the converter "
                               "cannot (validate warns; the parity check runs the result).")
    dynamic_batch: bool = Field(True, description="Let the exported model take any batch size (checked on batch 3).")
    parity_check: bool = Field(True, description="Run the exported file on a random input and compare it with "
                                                 "eager PyTorch.")
    tolerance: Annotated[float, Field(le=1), Why("a tolerance this large would pass any export")] = Field(
        1e-4, gt=0, description="Largest absolute difference of the logits the parity check allows.")
    overwrite: bool = Field(False, description="Replace a file that already exists at an output_path outside the run "
                                               "directory (one inside it is the run's own, always replaced). A folder, "
                                               "device, fifo or socket is never replaced.")

    @field_validator("input_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]  # a single number means a square/cube; expanded to the network's dims in run
        return v

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not 1 <= len(v) <= 3 or any(s < 1 for s in v)):
            raise ValueError("input_size must be 1 to 3 positive sizes, e.g. [256, 256]")
        return v


def sample_shape(cfg: ModelExportConfig, network: NetworkDescription | None, dataset_info=None) -> tuple[int, ...]:
    """(in_channels, *spatial) of the sample input, from the config, the loader or the network."""
    dims = (network and network.spatial_dims) or getattr(dataset_info, "spatial_dims", None)
    channels = (network and network.in_channels) or getattr(dataset_info, "in_channels", None)
    fixed = network.fixed_size if network else None
    size = cfg.input_size
    if size is None and dataset_info is not None and getattr(dataset_info, "patch_size", ()):
        size = list(dataset_info.patch_size)
    if size is None and fixed:
        size = list(fixed)
    if size is None or channels is None or dims is None:
        raise ValueError("ModelExport needs the sample input's size: set input_size (e.g. [256, 256]), or wire a "
                         "loader's dataset_info to this node")
    if len(size) == 1:
        size = size * dims
    if len(size) != dims:
        raise ValueError(f"ModelExport.input_size {size} has {len(size)} sizes; the network is {dims}-D")
    found = network.size_problem(tuple(size)) if network is not None else None
    if found:
        problem, example = found
        raise ValueError(f"ModelExport.input_size {size}: the {network.type} {problem}" +
                         (f"; e.g. {example}" if example else ""))
    return (int(channels), *map(int, size))


def _special(path: Path) -> str | None:
    """What `path` is (a link followed) when it is not a regular file; None for a file or a dangling link."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a fifo (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    return f"a link to {kind} ({os.path.realpath(path)})" if path.is_symlink() else kind


def _entry(path: Path) -> Path:
    """`path` with its folders resolved but not its last part: a link there is what the export replaces."""
    return Path(os.path.normpath(path.parent.resolve() / path.name))


def _in_a_run_dir(path: Path) -> bool:
    return any((folder / "workflow.resolved.json").is_file() for folder in _entry(path).parents)


def output_findings(path: Path, run_dir: Path | None, overwrite: bool) -> list[Finding]:
    """Why the export must not be written to `path`. Never over anything but a regular file; over an
    existing file only inside `run_dir` (the run's own: a resumed run writes it again) or with `overwrite`.
    `run_dir` None (preflight, before the run directory is settled): a file inside some run directory
    may be this run's (a resumed one), so `run` decides about it."""
    if not os.path.lexists(path):
        return []
    kind = _special(path)
    if kind:
        return [Finding("output_path", "output_not_file", f"output_path {path} is {kind}, not a file the export "
                        "may replace", hint="name a file, e.g. export/model.onnx (inside the run directory)")]
    if overwrite:
        return []
    ours = _entry(path).is_relative_to(Path(run_dir).resolve()) if run_dir is not None else _in_a_run_dir(path)
    if ours:
        return []
    return [Finding("output_path", "output_exists", f"output_path {path} already exists, outside the run "
                    "directory; the export would replace it", hint="set overwrite: true to replace it, or choose "
                    "another output_path (a relative one lives inside the run directory)")]


@register
class ModelExport(Node):
    """The network as an ONNX, torch.export (.pt2) or TorchScript file, checked against eager PyTorch."""

    type = "ModelExport"
    family = "export"
    Config = ModelExportConfig
    inputs = (
        Port("model", "TrainedModel", accepts=("Model",), doc="the network to export"),
        Port("dataset_info", "DatasetInfo", required=False, doc="gives the sample input's patch size"),
    )
    outputs = (Port("file", "File", doc="path of the exported file"),)

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        cfg: ModelExportConfig = config  # type: ignore[assignment]
        found = size_findings("input_size", cfg.input_size, neighbours.get("model@origin") or neighbours.get("model"),
                              "the loader's patch size")
        if cfg.format == "onnx" and cfg.opset < 18:
            found.append(Finding("opset", "old_opset", f"opset {cfg.opset} is converted down from 18 by onnxscript's "
                                 "version converter, which does not handle every operator (then the older "
                                 "TorchScript-based exporter writes it); the parity check runs the result",
                                 hint="use opset 18 or later unless a runtime needs an older one", severity="warning"))
        return found

    def run(self, model, dataset_info=None) -> dict[str, Any]:
        from segflow.export.formats import export_model
        from segflow.networks.description import description_of

        cfg: ModelExportConfig = self.config  # type: ignore[assignment]
        path = self.ctx.output_path(cfg.output_path or f"export/model.{EXTENSIONS[cfg.format]}")
        for f in output_findings(path, self.ctx.run_dir, cfg.overwrite):  # again: the world may have changed
            raise ConfigValueError(f.field, f.code, f.message, f.hint, node=self.name)
        shape = sample_shape(cfg, description_of(model), dataset_info)
        report = export_model(model, cfg.format, path, shape, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch,
                              parity_check=cfg.parity_check, tolerance=cfg.tolerance, log=self.ctx.log)
        self.ctx.extras.setdefault("exports", []).append(report)
        return {"file": path}

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        """Before training: an absolute output_path (or one starting with ~) that would replace a user's
        file or a device. A relative one lives inside the run directory; `run` checks it there."""
        cfg: ModelExportConfig = config  # type: ignore[assignment]
        path = Path(cfg.output_path or "").expanduser()
        return output_findings(path, None, cfg.overwrite) if path.is_absolute() else []
