"""What every node type is made of: a pydantic config model, declared ports, and a `run`.

This module (like every node module) imports no torch or monai: `segflow validate` loads all
node types to check a file, and must stay fast on a CI machine. Heavy work happens inside
`Node.run`, which imports what it needs there.
"""
from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, WithJsonSchema, model_validator

from segflow.nodes.words import PAD, lowered, spelt


@dataclass(frozen=True)
class Port:
    """One input or output of a node.

    `type` drives auto-wiring (docs/architecture.md, Auto-wiring). For inputs, `accepts` lists further types in falling
    preference (a Predictor takes a TrainedModel when there is one, else a Model). `prefer`
    breaks ties between several outputs of the fitting type by output port name (a Trainer's
    `train_loader` input picks a loader's `train_loader` over its `val_loader`). `passes` on an
    output names the input it hands on after changing it (CheckpointLoader loads weights into
    its `model` input and outputs it): auto-wiring then prefers the changed one. `fallback` on a
    required input names a config key that stands in for it: with the key set, the input may stay
    unwired (a Trainer without a LossFunction builds its loss from `loss_type`).
    """

    name: str
    type: str
    required: bool = True
    doc: str = ""
    accepts: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    passes: str | None = None
    fallback: str | None = None

    @property
    def types(self) -> tuple[str, ...]:
        return (self.type, *self.accepts)


def _loose_value(value: Any, annotation: Any) -> Any:
    """Values from GUI-saved files arrive as strings: "[0.9, 0.999]", "null". Scalars ("8",
    "1e-4", "True") are pydantic's lax mode; lists, dicts and null are undone here."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
            return value  # left for pydantic to report at this field's path
    if text in ("null", "None", "none") and _allows_none(annotation):
        return None
    return value


DEVICES = "auto, cpu, cuda, cuda:N, mps (Apple GPUs)"
_DEVICE = re.compile(r"(auto|cpu|mps)|(?:cuda|gpu)(?::([0-9]+))?")
# What `canonical_device` takes, for the JSON schema: the same words by the spelling rule of
# segflow.nodes.words (any ASCII case, padded with white space); valid ECMA-262 and Python.
DEVICE_PATTERN = (f"^{PAD}(?:{spelt('auto')}|{spelt('cpu')}|{spelt('mps')}|(?:{spelt('cuda')}|{spelt('gpu')})"
                  f"(?::[0-9]+)?){PAD}$")


def canonical_device(text: str) -> str:
    """A device as torch names it: ' CUDA:1 ' -> 'cuda:1', 'gpu' -> 'cuda', 'GPU:01' -> 'cuda:1'
    (torch refuses leading zeros). ValueError, worded for people, for anything else."""
    found = _DEVICE.fullmatch(lowered(text))
    if found is None:
        raise ValueError(f"{text!r} is not one of {DEVICES}")
    if found[1]:
        return found[1]
    return "cuda" if found[2] is None else "cuda:" + (found[2].lstrip("0") or "0")


def _device_value(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str):
        return value  # pydantic says it must be a string
    try:
        return canonical_device(value)
    except ValueError as e:
        raise ValueError(f"{info.field_name} {e}") from None


# A config field naming a device (Trainer and Predictor `device`, CheckpointLoader `map_location`).
Device = Annotated[str, BeforeValidator(_device_value), WithJsonSchema({"type": "string", "pattern": DEVICE_PATTERN})]


def _allows_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


class NodeConfig(BaseModel):
    """Base of every node's config: strict about keys, lax about GUI-saved strings.

    `aliases` maps spellings found in the wild to the canonical key (`lr` -> `learning_rate`);
    the spec layer renames them before validation so errors still point at what the user wrote.
    """

    # allow_inf_nan: every float is finite (segflow.nodes.bounds); no field takes NaN or infinity
    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True, allow_inf_nan=False)

    aliases: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _coerce_loose_strings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: _loose_value(v, fields[k].annotation) if k in fields else v for k, v in data.items()}


@dataclass(frozen=True)
class Finding:
    """A problem `Node.check` found in a node's config, in the light of what is wired to it.

    `field` is the config key it is about ("" for the node as a whole). Codes are stable and
    documented; severity "warning" is reported by `validate` without failing it.
    """

    field: str
    code: str
    message: str
    hint: str = ""
    severity: str = "error"


def device_findings(requested: str) -> list[Finding]:
    """For `preflight`: a `device_unavailable` finding when `requested` (a node's device, or the
    --device override) names a CUDA or MPS device this machine lacks. torch is imported only then."""
    try:
        requested = canonical_device(requested)
    except ValueError as e:  # an override given through the API; the command line checks its own
        return [Finding("device", "bad_value", f"device {e}")]
    if requested in ("auto", "cpu"):
        return []
    from segflow.training.device import resolve_device

    try:
        resolve_device(requested)
    except ValueError as e:
        return [Finding("device", "device_unavailable", str(e))]
    return []


def _port(ports: tuple[Port, ...], name: str | None) -> Port | None:
    return next((p for p in ports if p.name == name), None)


@dataclass
class RunContext:
    """What a running node may know about the run it is part of."""

    run_dir: Path
    workflow_name: str
    workflow_file: Path | None = None
    device: str | None = None  # --device from the command line; overrides node settings
    resume: str | None = None  # the checkpoint to resume from; the executor resolves --resume auto
    progress: bool = True  # progress bars on/off
    log: Callable[[str], None] = print
    extras: dict[str, Any] = field(default_factory=dict)
    # Experiment trackers a node opened (the Trainer's MLflow run): later nodes report to them
    # (`evaluation(metrics_json)`), and the executor ends them (`end(status)`) when the run ends.
    trackers: list[Any] = field(default_factory=list)
    # Called once, by `mark_usable`: the executor repoints runs/<workflow>/latest at a new run then.
    on_usable: Callable[[], None] | None = None

    def mark_usable(self) -> None:
        """The run now holds something later workflows may load: a Trainer calls this after its first
        checkpoint is written, the executor when the run ends without error. Only the first call counts."""
        callback, self.on_usable = self.on_usable, None
        if callback is not None:
            callback()

    def output_path(self, value: str | Path) -> Path:
        """Where a node writes: an absolute path as given, a relative one inside the run directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.run_dir) / path


class Node:
    """A node type. Subclasses set the class attributes and implement `run`.

    `run(**inputs)` receives the values of its wired inputs by port name (optional unwired
    inputs are absent) and returns a dict with one value per output port.
    """

    type: ClassVar[str]
    family: ClassVar[str] = "misc"
    Config: ClassVar[type[NodeConfig]] = NodeConfig
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    # Other names files use for this type and its ports (the node editor's, docs/workflow-format.md);
    # `<type>Node`, the editor's class name, is always one of the type's.
    type_aliases: ClassVar[tuple[str, ...]] = ()
    port_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, config: NodeConfig, ctx: RunContext):
        self.name = name
        self.config = config
        self.ctx = ctx

    def run(self, **inputs: Any) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def input(cls, name: str) -> Port | None:
        """The input called `name`, else the one its entry in `port_aliases` names."""
        return _port(cls.inputs, name) or _port(cls.inputs, cls.port_aliases.get(name))

    @classmethod
    def output(cls, name: str) -> Port | None:
        return _port(cls.outputs, name) or _port(cls.outputs, cls.port_aliases.get(name))

    @classmethod
    def check(cls, config: NodeConfig, neighbours: dict[str, tuple[str, NodeConfig]]) -> list[Finding]:
        """Static checks, run by `validate` after wiring; they must not touch the file system.

        `neighbours` maps each wired input port to (source node type, source config), so a node
        can check itself against what feeds it (a network's `in_channels` against the loader).
        Where the source hands on one of its own inputs (`Port.passes`: a CheckpointLoader's or a
        Trainer's model), "PORT@origin" also maps to the node the chain started from (the network).
        """
        return []

    @classmethod
    def preflight(cls, config: NodeConfig, device: str | None) -> list[Finding]:
        """Checks of the world (files exist, the device is there), run by `segflow run` for every
        node before any node starts, so a typo in a late node's path costs no training time.
        `device` is the --device override, if any."""
        return []
