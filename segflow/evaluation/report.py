"""A readable summary of any value a node hands on, for the Print node.

Each kind of value says what matters about it: metrics their table, a history its last epoch and
its best, a model its size, a loader its batches, a tensor its shape and range. Anything else
is shown as itself, cut short. torch is looked at only when the value came from it.
"""
from __future__ import annotations

import math
import sys
from typing import Any

_LONG = 400  # characters of a repr shown before it is cut
_LISTED = 5  # items of a list or cases of a set named


def summary(value: Any) -> str:
    """Lines (each indented by two spaces) describing `value`."""
    return "\n".join("  " + line for line in _lines(value))


def _lines(value: Any) -> list[str]:
    for test, describe in _KINDS:
        if test(value):
            return describe(value)
    return [_short(repr(value))]


def _short(text: str) -> str:
    return text if len(text) <= _LONG else text[:_LONG] + f"... ({len(text)} characters)"


def _number(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _is_metrics(v: Any) -> bool:
    return isinstance(v, dict) and {"per_class", "mean", "metrics"} <= set(v)


def _metrics(v: dict) -> list[str]:
    from segflow.evaluation.metrics import summary_table

    return summary_table(v).splitlines()


def _is_history(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) and "epoch" in r for r in v)


def _history(rows: list[dict]) -> list[str]:
    last = rows[-1]
    out = [f"training history: {len(rows)} epoch(s); the last:"]
    out += [f"  {k}: {_number(v)}" for k, v in last.items() if isinstance(v, (int, float)) and k != "epoch"]
    for key, best in (("val_dice", max), ("val_loss", min), ("train_loss", min)):
        seen = [r for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if seen:
            row = best(seen, key=lambda r: r[key])
            out.append(f"best {key}: {_number(row[key])} at epoch {row['epoch']}")
            break
    return out


def _is_torch(v: Any, name: str) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, _attr(torch, name))


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _tensor(t: Any) -> list[str]:
    out = [f"tensor of shape {list(t.shape)}, {str(t.dtype).removeprefix('torch.')}, on {t.device}"]
    if t.numel():
        f = t.detach().float()
        out.append(f"range [{_number(f.min().item())}, {_number(f.max().item())}], mean {_number(f.mean().item())}")
    return out


def _array(a: Any) -> list[str]:
    out = [f"array of shape {list(a.shape)}, {a.dtype}"]
    if a.size and a.dtype.kind in "biuf":
        out.append(f"range [{_number(a.min().item())}, {_number(a.max().item())}], mean {_number(float(a.mean()))}")
    return out


def _module(m: Any) -> list[str]:
    total = sum(p.numel() for p in m.parameters())
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    from segflow.networks.description import description_of

    about = description_of(m)
    kind = f" ({about.type}, {about.spatial_dims}-D)" if about is not None else ""
    return [f"model {type(m).__name__}{kind}: {total:,} parameters, {trainable:,} trainable"]


def _optimizer(o: Any) -> list[str]:
    groups = ", ".join(f"lr {_number(g['lr'])} ({sum(p.numel() for p in g['params']):,} parameters)"
                       for g in o.param_groups)
    return [f"optimizer {type(o).__name__}: {len(o.param_groups)} parameter group(s): {groups}"]


def _is_loader(v: Any) -> bool:
    return hasattr(v, "dataset") and hasattr(v, "__len__") and hasattr(v, "__iter__")


def _loader(v: Any) -> list[str]:
    return [f"data loader: {len(v)} batch(es) of {getattr(v, 'batch_size', '?')}, {len(v.dataset)} sample(s)"]


def _is_prediction_set(v: Any) -> bool:
    return hasattr(v, "records") and hasattr(v, "num_classes") and hasattr(v, "output_dir")


def _prediction_set(v: Any) -> list[str]:
    cases = [r.case for r in v.records]
    named = ", ".join(cases[:_LISTED]) + (f", ... ({len(cases) - _LISTED} more)" if len(cases) > _LISTED else "")
    labelled = sum(r.label_path is not None for r in v.records)
    return [f"predictions of {len(cases)} case(s) ({labelled} with ground truth), {v.num_classes} classes, "
            f"{v.spatial_dims}-D, in {v.output_dir}", f"cases: {named}"]


def _is_dataclass(v: Any) -> bool:
    return hasattr(v, "__dataclass_fields__") and not isinstance(v, type)


def _dataclass(v: Any) -> list[str]:
    return [f"{type(v).__name__}:"] + [f"  {k}: {_short(repr(getattr(v, k)))}" for k in v.__dataclass_fields__]


def _mapping(v: dict) -> list[str]:
    return [f"{k}: {_short(repr(x)) if not isinstance(x, float) else _number(x)}" for k, x in v.items()] or ["{}"]


def _sequence(v: Any) -> list[str]:
    items = [_short(repr(x)) for x in list(v)[:_LISTED]]
    return [f"{type(v).__name__} of {len(v)} item(s)"] + [f"  {x}" for x in items] + (
        ["  ..."] if len(v) > _LISTED else [])


_KINDS = [
    (lambda v: v is None, lambda v: ["nothing (the output linked here gave None)"]),
    (lambda v: isinstance(v, (bool, int, float, str)), lambda v: [_number(v) if not isinstance(v, str) else v]),
    (_is_metrics, _metrics),
    (_is_history, _history),
    (lambda v: _is_torch(v, "Tensor"), _tensor),
    (lambda v: type(v).__module__ == "numpy" and hasattr(v, "shape"), _array),
    (lambda v: _is_torch(v, "nn.Module"), _module),
    (lambda v: _is_torch(v, "optim.Optimizer"), _optimizer),
    (_is_prediction_set, _prediction_set),
    (_is_loader, _loader),
    (_is_dataclass, _dataclass),
    (lambda v: isinstance(v, dict), _mapping),
    (lambda v: isinstance(v, (list, tuple)), _sequence),
]
