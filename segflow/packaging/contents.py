"""What a segflow package holds and how it is checked when read (stdlib only: no torch).

A package is a folder (or the same folder zipped, `model.segflow.zip`):

    metadata.json       MONAI Bundle's metadata keys where they mean the same (version, authors, license,
                        network_data_format, ...) plus the training data summary and validation metrics
    inference.json      what a prediction needs: the network (node type and config), the loader's
                        preprocessing settings, the Predictor's settings, classes, label coding
    weights.pt          the chosen weights as a plain state_dict
    model.pt2           the network as a torch.export ExportedProgram   (when it exports)
    model.onnx          the network as ONNX                             (when it exports)
    training_workflow.json   the resolved workflow that trained it (provenance)
    postprocessing.json the largest-component rule the Trainer chose on validation (when it chose one)

`metadata.json` lists every file with its SHA-256, so a damaged or swapped file is found before use.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "segflow-package"
FORMAT_VERSION = 1
WEIGHTS, PROGRAM, ONNX = "weights.pt", "model.pt2", "model.onnx"
METADATA, INFERENCE, TRAINING = "metadata.json", "inference.json", "training_workflow.json"
POSTPROCESSING = "postprocessing.json"  # the rule chosen on validation, when the run chose one


class PackageError(ValueError):
    """A package that cannot be used; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Package:
    """A package opened for prediction: its folder (unpacked when it was a zip) and its two JSON files."""

    root: Path
    metadata: dict[str, Any]
    inference: dict[str, Any]
    source: Path  # what the user named: the folder or the zip

    def file(self, name: str) -> Path | None:
        """A file the package lists (checked when opened), or None when the package has none by that name."""
        return self.root / name if name in self.metadata.get("files", {}) else None

    @property
    def in_channels(self) -> int:
        return int(self.inference["dataset"]["in_channels"])

    @property
    def spatial_dims(self) -> int:
        return int(self.inference["dataset"]["spatial_dims"])


def open_package(path: str | Path, scratch: Path | None = None) -> Package:
    """Open a package folder or zip and check its format version and every file's checksum."""
    source = Path(path)
    if not source.exists():
        raise PackageError(f"{source}: no such package (a folder or .zip written by `segflow package`)")
    root = source
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise PackageError(f"{source}: not a segflow package (neither a folder nor a zip file)")
        root = Path(tempfile.mkdtemp(prefix="segflow-package-", dir=scratch))
        with zipfile.ZipFile(source) as z:
            z.extractall(root)
    metadata = read_json(root / METADATA, f"{source}: {METADATA} is missing; not a segflow package")
    if metadata.get("format") != FORMAT:
        raise PackageError(f"{root / METADATA}: not a segflow package metadata file "
                           f"(format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PackageError(f"{root / METADATA}: package format version {version} is newer than this segflow reads "
                           f"({FORMAT_VERSION}); upgrade segflow (`pip install -U segflow`)")
    for name, digest in metadata.get("files", {}).items():
        file = root / name
        if not file.is_file():
            raise PackageError(f"{source}: {name} is missing (the package lists it)")
        if sha256(file) != digest:
            raise PackageError(f"{file}: the file is damaged or was replaced (its SHA-256 differs from the one "
                               f"{METADATA} records)")
    return Package(root, metadata, read_json(root / INFERENCE, f"{source}: {INFERENCE} is missing; not a segflow package"), source)


def read_json(path: Path, missing: str) -> Any:
    """A JSON file of a package or a run directory; PackageError saying `missing` when it is not
    there, or that it is not JSON."""
    if not path.is_file():
        raise PackageError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from e


def finish(staging: Path, out: Path, as_zip: bool) -> Path:
    """Move the finished package from `staging` to `out` (a folder, or a zip when `as_zip`), replacing
    nothing half-way: the old package stays until the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if as_zip:
        partial = out.with_name(out.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for file in sorted(staging.rglob("*")):
                if file.is_file():
                    z.write(file, file.relative_to(staging).as_posix())
        partial.replace(out)
        shutil.rmtree(staging, ignore_errors=True)
        return out
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
    return out
