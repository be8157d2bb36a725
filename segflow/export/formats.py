"""Exporting a network to ONNX, a torch.export ExportedProgram or TorchScript, with a parity check
against eager PyTorch.

torch_export writes `torch.export.save` of the network's ExportedProgram (.pt2), the format
PyTorch now deploys from (AOTInductor compiles it; `torch.export.load(path).module()` runs it).
TorchScript goes through `torch.jit.trace` (MONAI's networks do not all script); ONNX through
`torch.onnx.export`'s torch.export-based exporter, falling back to the older TorchScript-based
one for networks the new one cannot capture. Whatever the route, the written file is loaded
back and run on a sample input (onnxruntime for ONNX, or onnx's reference evaluator when
onnxruntime is not installed), and the largest absolute difference from the eager model's
logits must stay within `tolerance`. The file is written under a temporary name of its own
(`.<name>.XXXX.partial`) and renamed at the end, so a failed export never replaces a good one, and
the export writes no other file.
"""
from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from segflow.networks.description import description_of
from segflow.workflow.errors import ConfigValueError, first_line


def network_name(model: torch.nn.Module) -> str:
    described = description_of(model)
    return described.type if described else type(model).__name__


def _logits(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):  # deep supervision heads: the first is the full-resolution one
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the network returned {type(out).__name__}, not a tensor of logits")
    return out


class _Logits(torch.nn.Module):
    """Wraps a network so the exported graph has exactly one tensor output."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _logits(self.net(x))


def _export_torchscript(module, sample, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's notes on deprecation and data-dependent branches
        traced = torch.jit.trace(module, sample, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation note
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return _logits(loaded(x)).numpy()


def _export_program(module, sample, path: Path, dynamic_batch: bool) -> None:
    # a batch of 2 to trace with: torch.export specialises sizes 0 and 1, so a batch-1 sample
    # would fix the batch axis even when it is declared dynamic
    sample = sample.expand(2, *sample.shape[1:]).contiguous() if dynamic_batch else sample
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (sample,), dynamic_shapes=shapes)
    buffer = io.BytesIO()  # through a buffer: torch.export.save warns about any file name not ending .pt2
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


def _run_program(path: Path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return _logits(torch.export.load(io.BytesIO(path.read_bytes())).module()(x)).numpy()


@contextmanager
def _quiet_onnx_logs():
    """The exporter logs a warning per torchvision op it skips when torchvision is absent (always,
    for segmentation networks); real failures still raise."""
    # onnxscript's version converter logs a traceback when it cannot convert down; _opset_written says so
    loggers = [(logging.getLogger("torch.onnx"), logging.ERROR), (logging.getLogger("onnxscript"), logging.CRITICAL)]
    levels = [logger.level for logger, _ in loggers]
    for logger, quiet in loggers:
        logger.setLevel(quiet)
    try:
        yield
    finally:
        for (logger, _), level in zip(loggers, levels):
            logger.setLevel(level)


def _opset_of(path: Path) -> int | None:
    """The default-domain opset of an ONNX file. Below 18 the torch.export-based exporter converts
    down, and where the converter lacks an operator's adapter it keeps 18 and only logs it."""
    import onnx

    return next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx")), None)


def _export_onnx(module, sample, path: Path, opset: int, dynamic_batch: bool,
                 dynamic_spatial: bool = False) -> tuple[str, str | None]:
    """(exporter used, why the first one failed or None). `dynamic_spatial`: the spatial axes left free
    too (torch.export decides which it can keep free; the caller's parity check at a second size says
    whether the file really takes other sizes)."""
    errors = []
    spatial = range(2, sample.dim()) if dynamic_spatial else ()
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), _quiet_onnx_logs():  # progress prints, too
        warnings.simplefilter("ignore")
        try:
            axes = {0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else {}
            axes.update({axis: torch.export.Dim.AUTO for axis in spatial})
            shapes = (axes,) if axes else None
            torch.onnx.export(module, (sample,), str(path), opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_shapes=shapes, dynamo=True, external_data=False)
            written = _opset_of(path)
            if written in (None, opset):
                return "torch.export", None
            errors.append(f"torch.export-based exporter: could not convert to opset {opset} (wrote {written})")
        except Exception as e:  # the new exporter cannot capture every network; try the older one
            errors.append(f"torch.export-based exporter: {first_line(e)}")
        try:
            named = ({0: "batch"} if dynamic_batch else {}) | {axis: f"size_{axis - 2}" for axis in spatial}
            axes = {"image": named, "logits": named} if named else None
            torch.onnx.export(module, (sample,), str(path), opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes=axes, dynamo=False)
            return "torchscript-based", errors[0]
        except Exception as e:
            errors.append(f"TorchScript-based exporter: {first_line(e)}")
    if "could not convert to opset" in errors[0]:  # a file was written, at another opset: the setting's fault
        raise ConfigValueError("opset", "bad_value", f"no ONNX exporter wrote opset {opset}: {'; '.join(errors)}",
                               hint="use opset 18 or later")
    raise RuntimeError("; ".join(errors))


def _check_other_size(module, path: Path, shape: tuple[int, ...], gen: torch.Generator, tolerance: float,
                      name: str) -> None:
    """The ONNX file at a spatial size other than the one it was traced with, against eager PyTorch."""
    x = torch.randn((1, *shape), generator=gen)
    with torch.no_grad():
        expected = module(x).numpy()
    try:
        got, _ = _run_onnx(path, x)
    except Exception as e:  # onnxruntime refuses a size the graph fixed
        raise ValueError(f"the ONNX {name} does not take spatial size {list(shape[1:])}: {first_line(e)}") from e
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape else float("inf")
    if not diff <= tolerance:
        raise ValueError(f"the ONNX {name} at spatial size {list(shape[1:])} differs from eager PyTorch by {diff:.3g}")


def _run_onnx(path: Path, x: torch.Tensor) -> tuple[np.ndarray, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator  # pure Python: slow, but needs nothing more

        return np.asarray(ReferenceEvaluator(str(path)).run(None, {"image": x.numpy()})[0]), "onnx.reference"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], f"onnxruntime {ort.__version__}"


def export_model(model: torch.nn.Module, fmt: str, path: Path, input_shape: tuple[int, ...], *, opset: int = 18,
                 dynamic_batch: bool = True, parity_check: bool = True, tolerance: float = 1e-4, seed: int = 0,
                 log: Callable[[str], None] = print, other_size: tuple[int, ...] | None = None) -> dict:
    """Write `model` as `fmt` ("onnx" | "torch_export" | "torchscript") to `path`; `input_shape` is (C, *spatial).

    `other_size` (ONNX only): export with free spatial axes and check parity at this spatial size too;
    a file that cannot take it is an error like any parity failure (the caller may export fixed instead).

    Returns a report: path, format, input shape, exporter, runtime and max_abs_diff (None when
    the parity check is off). Raises ValueError naming the network and format when it cannot
    be exported, or when the exported model's logits differ by more than `tolerance`.
    """
    name = network_name(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _Logits(copy.deepcopy(model).cpu().eval())
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn((1, *input_shape), generator=gen)
    # parity on batch 3 when the batch axis is dynamic (the exports trace batch 1 or 2), so a frozen
    # batch size shows up as a failure
    check = torch.randn((3 if dynamic_batch else 1, *input_shape), generator=gen)
    # a name of its own (not <name>.partial), so no file that happens to be there is replaced or removed
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = module(check).numpy()
        exporter = _write(module, fmt, sample, tmp, name, opset, dynamic_batch, other_size is not None, log)
        report = {"path": str(path), "format": fmt, "network": name, "input_shape": [1, *input_shape],
                  "exporter": exporter, "dynamic_batch": dynamic_batch, "tolerance": tolerance,
                  "dynamic_spatial": other_size is not None, "max_abs_diff": None, "runtime": None}
        if other_size is not None:
            _check_other_size(module, tmp, (input_shape[0], *other_size), gen, tolerance, name)
        if parity_check:
            diff, runtime = _parity(tmp, fmt, check, expected, name, opset)
            report.update(max_abs_diff=diff, runtime=runtime)
            if not diff <= tolerance:  # also catches NaN
                raise ValueError(f"parity check failed for {name} as {fmt}: max abs difference {diff:.3g} from "
                                 f"eager PyTorch exceeds tolerance {tolerance:g} (ModelExport.tolerance); "
                                 f"the exported file was not written to {path}")
            log(f"export: {name} -> {path} ({fmt}, {exporter}); parity on {list(check.shape)} with {runtime}: "
                f"max abs diff {diff:.3g} <= {tolerance:g}")
        else:
            log(f"export: {name} -> {path} ({fmt}, {exporter}); parity check off")
        os.replace(tmp, path)
        return report
    finally:
        tmp.unlink(missing_ok=True)


def _write(module, fmt: str, sample: torch.Tensor, tmp: Path, name: str, opset: int, dynamic_batch: bool,
           dynamic_spatial: bool, log: Callable[[str], None]) -> str:
    """Write the file in `fmt`; the exporter that wrote it. ValueError naming the network and format
    when none can."""
    try:
        if fmt == "torchscript":
            _export_torchscript(module, sample, tmp)
            return "torch.jit.trace"
        if fmt == "torch_export":
            _export_program(module, sample, tmp, dynamic_batch)
            return "torch.export"
        if fmt == "onnx":
            exporter, first_failure = _export_onnx(module, sample, tmp, opset, dynamic_batch, dynamic_spatial)
            if first_failure:
                log(f"export: the torch.export-based ONNX exporter failed ({first_failure}); "
                    "used the TorchScript-based one")
            return exporter
    except ImportError as e:
        raise ValueError(f"exporting to {fmt} needs {e.name}: pip install 'segflow[export]'") from e
    except (RuntimeError, torch.jit.Error, TypeError, AssertionError, NotImplementedError) as e:
        raise ValueError(f"the network {name} cannot be exported to {fmt}: {e}. "
                         f"Try another format (onnx / torch_export / torchscript).") from e
    raise ValueError(f"unknown export format {fmt!r}; use onnx, torch_export or torchscript")


def _parity(tmp: Path, fmt: str, check: torch.Tensor, expected: np.ndarray, name: str,
            opset: int) -> tuple[float, str]:
    """(largest absolute difference of the written file's logits from eager PyTorch's, the runtime)."""
    if fmt == "torchscript":
        got, runtime = _run_torchscript(tmp, check), f"torch {torch.__version__}"
    elif fmt == "torch_export":
        got, runtime = _run_program(tmp, check), f"torch {torch.__version__}"
    else:
        try:
            got, runtime = _run_onnx(tmp, check)
        except Exception as e:  # the runtime refuses the file: an opset it lacks, an op it cannot run
            raise ValueError(f"the exported ONNX {name} (opset {opset}) does not run in the parity check: "
                             f"{first_line(e)}; try ModelExport.opset 18 or later") from e
    if got.shape != expected.shape:
        raise ValueError(f"the exported {fmt} {name} returns shape {list(got.shape)} for input "
                         f"{list(check.shape)}, eager PyTorch {list(expected.shape)}")
    return float(np.max(np.abs(got.astype(np.float64) - expected))), runtime
