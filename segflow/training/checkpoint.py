"""Checkpoint files: atomic writes, weights-only loads, what a Trainer checkpoint holds and how a
run is restored from it, RNG state, and the model's signature.

A checkpoint is a dict of tensors and plain containers only, so that `torch.load(weights_only=True)`
reads it: no pickled classes, nothing that runs code on load.
"""
from __future__ import annotations

import contextlib
import errno
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from segflow.networks.description import description_of
from segflow.workflow.errors import first_line
from segflow.workflow.files import atomic_write

FORMAT = "segflow-checkpoint"
VERSION = 1


@contextlib.contextmanager
def ctrl_c_after():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and deliver it when the block ends.
    torch.save turns a KeyboardInterrupt raised in its writes into a RuntimeError ("unexpected
    pos"), so a Ctrl-C during a checkpoint write ended the run as a failure instead of an
    interrupt; a write takes a moment, so finishing it first also keeps the newer checkpoint. Blocks
    nest: the Trainer holds one around an epoch's writes (best.pt, last.pt), so that a Ctrl-C in the
    first never leaves the second unwritten."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; other threads never see SIGINT
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # to whatever handled it before, now


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write `obj` to `path` so that a crash at any moment leaves either the old or the new file,
    fsynced so that it survives a power loss; a Ctrl-C during the write waits until it is done."""
    try:
        with ctrl_c_after():
            return atomic_write(path, lambda f: torch.save(obj, f), durable=True)
    except (OSError, RuntimeError) as e:
        if not _out_of_space(e):
            raise
        name = Path(path).name
        kept = f"the previous {name} is intact" if Path(path).exists() else f"no {name} was written"
        raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full or a file-size limit was reached "
                                    f"({first_line(e, 200)}); {kept}. Free space (or raise the limit) and resume") from e


def _out_of_space(e: BaseException) -> bool:
    """torch.save reports a short write as "[enforce fail at inline_container.cc] unexpected pos ..."."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        return True
    return "unexpected pos" in str(e) or "No space left" in str(e) or "File too large" in str(e)


def remove_stale_writes(folder: Path, log: Callable[[str], None]) -> None:
    """Delete the temporary files of checkpoint writes a killed run left in `folder` (`.last.pt.XXXX.tmp`,
    see `atomic_write`): the run that owns this folder is starting, so no write of its own is under way."""
    stale = [p for p in Path(folder).glob(".*.pt.*.tmp") if p.is_file()]
    freed = sum(p.stat().st_size for p in stale)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"checkpoints: removed {len(stale)} unfinished write(s) ({freed / 2**20:.1f} MiB) a killed run left "
            f"in {folder}")


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What a checkpoint file holds (a Trainer checkpoint, a bare state_dict, another tool's dict),
    read weights-only: tensors and plain containers, never code. The caller checks that the file exists
    (each has its own advice when it does not) and what the contents are."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file may be truncated, or "
                         "hold pickled Python objects (only tensors and plain values load with weights_only=True)") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A segflow Trainer checkpoint (last.pt, best.pt, epoch_NNNN.pt)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give the path of a last.pt/best.pt "
                                f"written by a Trainer, or resume with 'auto'")
    data = read_file(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a segflow Trainer checkpoint (no 'format: {FORMAT}' entry); "
                         f"to load bare weights use a CheckpointLoader node instead of resuming")
    return data


# ---- what a Trainer checkpoint holds --------------------------------------------------------

@dataclass
class Progress:
    """Everything about a run's progress that a checkpoint carries besides the states of its parts."""

    epoch: int = 0  # last finished epoch
    global_step: int = 0  # optimizer steps so far
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # validated epochs since the monitor last improved
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainerParts:
    """The live objects whose states a checkpoint saves and restores. `schedule` is the Trainer's
    EpochSchedule; `loaders` are the ones whose own random generators are part of the RNG state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    loaders: list[Any]


def trainer_state_to_checkpoint(parts: TrainerParts, progress: Progress, rng_ranks: list[dict[str, Any]], *,
                                workflow: str, node: str, monitor: str, mode: str,
                                trainer_config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict of a run; `rng_ranks` holds each process's RNG state (capture_rng), rank 0's first."""
    return {
        "format": FORMAT, "version": VERSION,
        "workflow": workflow, "node": node,
        "epoch": progress.epoch, "global_step": progress.global_step,
        "model": parts.model.state_dict(), "model_signature": model_signature(parts.model),
        "optimizer": parts.optimizer.state_dict(), "scheduler": parts.schedule.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": rng_ranks[0],  # what a different number of processes resumes from (and files before rng_ranks)
        "monitor": {"name": monitor, "mode": mode, "best": progress.best, "best_epoch": progress.best_epoch},
        "early_stopping": {"bad_epochs": progress.bad_epochs},
        "history": progress.history,
        "trainer_config": trainer_config,
        "rng_ranks": rng_ranks,
    }


def processes_of(data: dict[str, Any]) -> int:
    """How many processes' RNG streams a checkpoint holds; 0 for files written before it kept them."""
    return len(data.get("rng_ranks") or [])


def restore_trainer_state(data: dict[str, Any], parts: TrainerParts, rank: int, world_size: int) -> Progress:
    """Load a checkpoint's states into `parts` and return its progress. Every rank resumes its own
    random streams when as many processes wrote the checkpoint as run now; otherwise all take rank 0's
    (the data order then continues from the epoch, not bit for bit)."""
    parts.model.load_state_dict(data["model"])
    parts.optimizer.load_state_dict(data["optimizer"])
    parts.schedule.load_state_dict(data["scheduler"])
    parts.scaler.load_state_dict(data["scaler"])
    monitor = data["monitor"]
    progress = Progress(epoch=data["epoch"], global_step=data["global_step"], best=monitor["best"],
                        best_epoch=monitor["best_epoch"], bad_epochs=data["early_stopping"]["bad_epochs"],
                        history=list(data["history"]))
    rng = data["rng_ranks"][rank] if processes_of(data) == world_size else data["rng"]
    restore_rng(rng, parts.loaders)
    return progress


def schedule_settings_of(data: dict[str, Any]) -> dict[str, Any]:
    """The lr schedule's settings a checkpoint was trained with; of files written before the schedule
    recorded them, the number of epochs (from the Trainer config)."""
    return data["scheduler"].get("settings") or {"epochs": data["trainer_config"]["epochs"]}


# ---- random number generators -------------------------------------------------------------

def _generators_of(loader: Any) -> list[torch.Generator]:
    """The torch generators a DataLoader draws its shuffling and worker seeds from, if it has its own."""
    found: list[torch.Generator] = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def capture_rng(loaders: list[Any] = ()) -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loaders": [[g.get_state() for g in _generators_of(ld)] for ld in loaders],
    }
    return state


def restore_rng(state: dict[str, Any], loaders: list[Any] = ()) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    for loader, saved in zip(loaders, state.get("loaders", [])):
        for gen, gen_state in zip(_generators_of(loader), saved):
            gen.set_state(gen_state)


# ---- which model a checkpoint belongs to ------------------------------------------------------

def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """What must not change between a checkpoint and the model it is resumed into.

    A network segflow built carries its node config (`description_of`); it is compared key by key,
    so the error names the config field that changed.
    """
    described = description_of(model)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "spec": {"type": described.type, "config": described.config} if described and described.config else None,
    }


def signature_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A sentence naming how the current model differs from the checkpoint's, or None if it does not."""
    s_spec, c_spec = saved.get("spec"), current.get("spec")
    if s_spec and c_spec and s_spec != c_spec:
        if s_spec.get("type") != c_spec.get("type"):
            return f"the checkpoint holds a {s_spec.get('type')} model, the workflow builds a {c_spec.get('type')}"
        sc, cc = s_spec.get("config") or {}, c_spec.get("config") or {}
        diffs = [f"{k}: {sc.get(k)!r} in the checkpoint, {cc.get(k)!r} now" for k in sorted(set(sc) | set(cc))
                 if sc.get(k) != cc.get(k)]
        if diffs:
            return "the model config changed (" + "; ".join(diffs) + ")"
    if saved["class"] != current["class"]:
        return f"the checkpoint holds a {saved['class']} model, the workflow builds a {current['class']}"
    s, c = saved["shapes"], current["shapes"]
    missing = [k for k in s if k not in c]
    extra = [k for k in c if k not in s]
    if missing or extra:
        return (f"the model's layers differ: {len(missing)} in the checkpoint only (e.g. {missing[:3]}), "
                f"{len(extra)} in the model only (e.g. {extra[:3]})")
    for k in s:
        if list(s[k]) != list(c[k]):
            return f"parameter '{k}' has shape {tuple(s[k])} in the checkpoint but {tuple(c[k])} in the model"
    return None


# ---- files in the checkpoint folder -----------------------------------------------------------

def periodic_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def prune_periodic(folder: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` periodic checkpoints; last.pt and best.pt are never touched."""
    if keep_last is None:
        return []
    periodic = sorted(folder.glob("epoch_*.pt"))
    doomed = periodic[: max(0, len(periodic) - keep_last)]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed

