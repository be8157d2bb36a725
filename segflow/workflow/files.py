"""Writing files so that a crash at any moment leaves either the old file or the new one, and JSON
with NaN/Infinity as null (they are not JSON; `json.dumps` would write them anyway).

Every file segflow writes into a run directory or next to a user's data goes through here: a
reader (a second process, TensorBoard, a person) never sees half a file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *, durable: bool = False) -> Path:
    """Call `write(f)` on a temporary file in `path`'s folder, then rename it over `path`.

    The rename is atomic on POSIX and Windows. `durable` also fsyncs the file and its folder, so the
    new file survives a power loss (checkpoints); without it a crash of segflow itself still never
    leaves half a file. The temporary file is removed when `write` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets one open a folder
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±Infinity) inside dicts, lists and tuples as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(data: Any, indent: int | None = 2) -> str:
    """Standard JSON of `data` (NaN/Infinity as null, other objects as their str), newline-ended."""
    return json.dumps(json_safe(data), indent=indent, default=str, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """`data` as standard JSON at `path`, written atomically."""
    return atomic_write_text(path, json_text(data, indent))
