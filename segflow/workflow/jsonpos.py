"""A JSON reader that remembers where every key and value sits in the file.

The standard `json` module forgets positions, but every issue we report names its line and
column. This reader returns the same values as `json.loads` plus, for each path in the
document, the 1-based (line, column) of the key (for object members) and of the value.
Duplicate keys in one object, which `json.loads` silently collapses, are reported.
"""
from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring

Path = tuple  # ("nodes", 4, "config", "learning_rate")

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = re.compile(r"[ \t\n\r]*")
_LITERALS = {"true": True, "false": False, "null": None}


class JSONSyntaxError(ValueError):
    def __init__(self, message: str, line: int, column: int):
        super().__init__(f"{message} (line {line}, column {column})")
        self.message, self.line, self.column = message, line, column


@dataclass
class Positions:
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[Path] = field(default_factory=list)

    def of(self, path: Path, *, key: bool = False) -> tuple[int, int] | None:
        """Where `path` is; if it is not in the file (a missing key), its nearest parent."""
        path = tuple(path)
        while True:
            table = self.keys if key else self.values
            if path in table:
                return table[path]
            if path in self.values:
                return self.values[path]
            if not path:
                return None
            path = path[:-1]
            key = False


class _Reader:
    def __init__(self, text: str):
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.pos = Positions()

    def where(self, i: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, i)
        return line, i - self.line_starts[line - 1] + 1

    def fail(self, message: str, i: int):
        raise JSONSyntaxError(message, *self.where(i))

    def skip(self, i: int) -> int:
        return _WS.match(self.text, i).end()

    def value(self, i: int, path: Path) -> tuple[object, int]:
        i = self.skip(i)
        self.pos.values[path] = self.where(i)
        ch = self.text[i : i + 1]
        if ch == "{":
            return self.obj(i + 1, path)
        if ch == "[":
            return self.array(i + 1, path)
        if ch == '"':
            return self.string(i)
        for word, val in _LITERALS.items():
            if self.text.startswith(word, i):
                return val, i + len(word)
        m = _NUMBER.match(self.text, i)
        if m and m.end() > i:
            s = m.group()
            return (float(s) if any(c in s for c in ".eE") else int(s)), m.end()
        if not ch:
            self.fail("unexpected end of file", i)
        self.fail(f"unexpected character {ch!r}", i)

    def string(self, i: int) -> tuple[str, int]:
        try:
            return scanstring(self.text, i + 1, True)
        except json.JSONDecodeError as e:
            self.fail(e.msg, e.pos)

    def obj(self, i: int, path: Path) -> tuple[dict, int]:
        out: dict = {}
        i = self.skip(i)
        if self.text[i : i + 1] == "}":
            return out, i + 1
        while True:
            i = self.skip(i)
            if self.text[i : i + 1] != '"':
                self.fail("expected a key in double quotes", i)
            key_at = self.where(i)
            key, i = self.string(i)
            sub = path + (key,)
            if key in out:
                self.pos.duplicates.append(sub)
            self.pos.keys[sub] = key_at
            i = self.skip(i)
            if self.text[i : i + 1] != ":":
                self.fail("expected ':' after a key", i)
            out[key], i = self.value(i + 1, sub)
            i = self.skip(i)
            ch = self.text[i : i + 1]
            if ch == "}":
                return out, i + 1
            if ch != ",":
                self.fail("expected ',' or '}' in an object", i)
            i += 1

    def array(self, i: int, path: Path) -> tuple[list, int]:
        out: list = []
        i = self.skip(i)
        if self.text[i : i + 1] == "]":
            return out, i + 1
        while True:
            item, i = self.value(i, path + (len(out),))
            out.append(item)
            i = self.skip(i)
            ch = self.text[i : i + 1]
            if ch == "]":
                return out, i + 1
            if ch != ",":
                self.fail("expected ',' or ']' in an array", i)
            i += 1


def loads(text: str) -> tuple[object, Positions]:
    """Parse `text`; raise JSONSyntaxError with line and column on malformed input."""
    reader = _Reader(text)
    value, i = reader.value(0, ())
    i = reader.skip(i)
    if i != len(text):
        reader.fail("extra data after the end of the document", i)
    return value, reader.pos


def format_path(path: Path) -> str:
    """("nodes", 4, "config", "lr") -> "nodes[4].config.lr"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
