"""Loading saved weights into a model: segflow Trainer checkpoints, common wrappers, bare state_dicts.

Files are read with `weights_only=True`, so a checkpoint can never run code on load. Keys saved
from a DistributedDataParallel model ("module.") or a torch.compile'd one ("_orig_mod.") are
unwrapped. Before anything is copied, the keys and shapes are compared with the model's, so a
mismatch is reported as a list (missing, unexpected, shape differences) rather than torch's
first-failure traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from segflow.training import checkpoint as ckpt

# Where other tools keep the weights inside a checkpoint dict (Lightning, common scripts, nnU-Net).
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "network_weights", "net")
PREFIXES = ("module.", "_orig_mod.")
LISTED = 5


def read_weights(path: str | Path, map_location: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict, model_signature or None) from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {path} does not exist (looked in {path.resolve()}); "
                                "paths are relative to the folder segflow runs in")
    data = ckpt.read_file(path, map_location)
    signature = None
    if isinstance(data, dict) and data.get("format") == ckpt.FORMAT:
        signature = data.get("model_signature")
        state = data.get("model")
    elif _is_state_dict(data):
        state = data
    else:
        state = next((data[k] for k in WRAPPER_KEYS if isinstance(data, dict) and _is_state_dict(data.get(k))), None)
    if not _is_state_dict(state):
        keys = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} holds no model weights: expected a segflow checkpoint, a state_dict, or a dict "
                         f"with one under {list(WRAPPER_KEYS)}; found {keys}")
    return strip_prefixes(state), signature


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop "module." / "_orig_mod." while every key carries one (DDP around compile, or the reverse)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose plain keys a state_dict should match (under DDP / torch.compile wrappers)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else None)
        if inner is None:
            return model
        model = inner


def compare(state: dict[str, torch.Tensor], model: torch.nn.Module):
    """(missing, unexpected, shape differences as (key, saved shape, model shape))."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def describe_mismatch(missing, unexpected, shapes, total_saved: int, total_model: int) -> str:
    def listed(items) -> str:
        more = f", ... ({len(items) - LISTED} more)" if len(items) > LISTED else ""
        return ", ".join(map(str, items[:LISTED])) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {total_model} entries are not in the file: {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's {total_saved} entries are not in the model: {listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} have other shapes: " + listed(
            [f"{k} {list(s)} in the file vs {list(m)} in the model" for k, s, m in shapes]))
    return "; ".join(parts)


def load_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = True, map_location: str = "cpu",
                 log: Callable[[str], None] = print, who: str = "CheckpointLoader") -> torch.nn.Module:
    """Copy the weights in `path` into `model` (in place) and return it."""
    state, signature = read_weights(path, map_location)
    target = unwrap(model)
    missing, unexpected, shapes = compare(state, target)
    if missing or unexpected or shapes:
        detail = describe_mismatch(missing, unexpected, shapes, len(state), len(target.state_dict()))
        why = ckpt.signature_difference(signature, ckpt.model_signature(target)) if signature else None
        fits = len(target.state_dict()) - len(missing) - len(shapes)
        if strict or fits == 0:
            raise ValueError(
                f"{who}: the weights in {path} do not fit the model" + (f" ({why})" if why else "") + f": {detail}. "
                + ("Build the network with the config it was trained with"
                   + ("" if fits == 0 or not strict else ", or set strict: false to load only the entries that fit")))
        log(f"{who}: strict is off; loaded {fits} entries from {path}, skipped the rest: {detail}")
        skip = {k for k, _, _ in shapes}
        state = {k: v for k, v in state.items() if k not in skip}
    target.load_state_dict(state, strict=False)
    return model


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What a weights file says about itself (CheckpointLoader's `checkpoint_info`): its path, and for
    a segflow Trainer checkpoint the epoch it was written at and the monitored best. Read memory-mapped
    where the file allows, so the weights are not read a second time."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
        data = ckpt.read_file(path)
    info: dict[str, Any] = {"checkpoint_path": str(path)}
    if isinstance(data, dict) and data.get("format") == ckpt.FORMAT:
        monitor = data.get("monitor") or {}
        info.update(epoch=data.get("epoch"), monitor=monitor.get("name"), best=monitor.get("best"),
                    best_epoch=monitor.get("best_epoch"))
    return info
