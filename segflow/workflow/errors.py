"""Errors a user can act on: every issue found in a workflow, located and coded.

A bad workflow never reaches the user as a Python traceback. The spec layer collects every
problem it finds into `Issue`s and raises one `WorkflowError` carrying them all; a node that
fails while running is reported as a `NodeRunError` naming the node, its type and the cause.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issue:
    code: str  # stable, documented in docs/workflow-format.md
    message: str
    path: str = ""  # JSON path: nodes[4].config.learning_rate
    node: str | None = None
    line: int | None = None
    column: int | None = None
    hint: str = ""
    severity: str = "error"  # or "warning"
    file: str | None = None

    def location(self) -> str:
        where = self.file or "<workflow>"
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        return where

    def format(self) -> str:
        head = f"{self.location()}: {self.severity}[{self.code}]"
        if self.node:
            head += f" node '{self.node}'"
        if self.path:
            head += f" at {self.path}"
        text = f"{head}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def as_github(self) -> str:
        """A GitHub Actions workflow command, so CI annotates the line in the file."""
        kind = "error" if self.severity == "error" else "warning"
        props = [f"file={self.file}"] if self.file else []
        if self.line is not None:
            props += [f"line={self.line}", f"col={self.column}"]
        msg = f"[{self.code}] {self.path + ': ' if self.path else ''}{self.message}"
        if self.hint:
            msg += f" ({self.hint})"
        msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return f"::{kind} {','.join(props)},title=segflow {self.code}::{msg}"

    def as_dict(self) -> dict:
        return asdict(self)


class WorkflowError(Exception):
    """A workflow file (or its --set overrides) is invalid. Carries every issue found."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        errors = [i for i in self.issues if i.severity == "error"]
        super().__init__(f"{len(errors)} problem(s) in the workflow:\n" + "\n".join(i.format() for i in errors))

    @property
    def codes(self) -> list[str]:
        return [i.code for i in self.issues if i.severity == "error"]

    def to_json(self) -> str:
        return json.dumps([i.as_dict() for i in self.issues], indent=2)


class NodeRunError(Exception):
    """A node failed while running; the original exception is chained as `__cause__`."""

    def __init__(self, node: str, node_type: str, cause: BaseException):
        self.node = node
        self.node_type = node_type
        reason = str(cause) or type(cause).__name__
        super().__init__(f"node '{node}' ({node_type}) failed: {reason}")


def first_line(error: BaseException, limit: int = 300) -> str:
    """"TypeName: the message's first line", without the terminal colours some libraries add: how a
    library's exception is quoted inside a message of segflow's own."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit] if text else ''}".rstrip(": ")


class ConfigValueError(ValueError):
    """A node's config value that only running can judge (a freeze pattern against the built model's
    parameter names), raised by an implementation package. The executor reports it like a validation
    issue, at the value's line in the file, instead of as a failed node. `field` as in a Finding
    ("freeze[1]", "param_groups[0].pattern"); `node` only names it in the plain message."""

    def __init__(self, field: str, code: str, message: str, hint: str = "", node: str | None = None):
        self.field, self.code, self.message, self.hint = field, code, message, hint
        where = f"{node}.{field}" if node else field
        super().__init__(f"{where}: {message}" + (f"; {hint}" if hint else ""))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) while a workflow ran, with the run directory it was writing, so the message
    can say how to resume exactly this run."""

    def __init__(self, run_dir: Path | None):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
