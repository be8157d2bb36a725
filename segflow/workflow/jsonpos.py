"""A JSON reader that remembers where every key and value sits in the file.

The standard `json` module forgets positions, but every issue we report names its line and
column. This reader returns the same values as `json.loads` plus, for each path in the
document, the 1-based (line, column) of the key (for object members) and of the value.
Duplicate keys in one object, which `json.loads` silently collapses, are reported.

Syntax errors name the mistake a person makes when writing JSON by hand (a trailing comma, a
comment, single quotes, an unquoted key, NaN) where it is. Input no workflow needs and Python
cannot hold (nesting deeper than MAX_DEPTH, integers longer than Python converts, half of a
UTF-16 surrogate pair) is refused the same way, with its position, never with a traceback.
"""
from __future__ import annotations

import bisect
import json
import re
import sys
from dataclasses import dataclass, field
from json.decoder import scanstring

Path = tuple  # ("nodes", 4, "config", "learning_rate")

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_WS = re.compile(r"[ \t\n\r]*")
_WORD = re.compile(r"-?[A-Za-z_][A-Za-z0-9_]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERALS = {"true": True, "false": False, "null": None}
# Words from other languages that people write in JSON files, and what JSON says instead.
_NOT_JSON = {
    "NaN": "NaN is not allowed in JSON; write null, or a number",
    "Infinity": "Infinity is not allowed in JSON; write a number (1e308), or null",
    "-Infinity": "-Infinity is not allowed in JSON; write a number (-1e308), or null",
    "True": "JSON writes True as true (lower case)",
    "False": "JSON writes False as false (lower case)",
    "None": "JSON writes None as null",
}
# A workflow needs about six levels; Python's own recursion limit is reached near 1000.
MAX_DEPTH = 100


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
        """Past white space; a comment, never valid JSON, is an error where it starts."""
        i = _WS.match(self.text, i).end()
        if self.text.startswith(("//", "/*", "#"), i):
            self.fail("comments (// ..., /* ... */, # ...) are not allowed in JSON; remove it, or keep notes "
                      "in the \"description\" field", i)
        return i

    def value(self, i: int, path: Path) -> tuple[object, int]:
        i = self.skip(i)
        self.pos.values[path] = self.where(i)
        ch = self.text[i : i + 1]
        if ch in ("{", "[") and len(path) >= MAX_DEPTH:
            self.fail(f"arrays and objects nested more than {MAX_DEPTH} levels deep", i)
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
            return self.number(m.group(), i), m.end()
        self.not_a_value(i)

    def number(self, s: str, i: int) -> int | float:
        if any(c in s for c in ".eE"):
            return float(s)
        try:
            return int(s)
        except ValueError:  # longer than sys.get_int_max_str_digits()
            self.fail(f"a number {len(s.lstrip('-'))} digits long; Python reads whole numbers of at most "
                      f"{sys.get_int_max_str_digits()} digits, and no setting needs one that long", i)

    def not_a_value(self, i: int):
        """Fail at i, where a value should start, naming what was written instead."""
        ch = self.text[i : i + 1]
        word = _WORD.match(self.text, i)
        if not ch:
            self.fail("unexpected end of file", i)
        if ch == "'":
            self.fail("strings need double quotes (\"...\"), not single quotes", i)
        if ch == "\ufeff" and i == 0:
            self.fail("the file starts with a byte order mark (U+FEFF); save it as UTF-8 without one", i)
        if word and word.group() in _NOT_JSON:
            self.fail(_NOT_JSON[word.group()], i)
        if word:
            self.fail(f"unexpected word {word.group()!r}: text needs double quotes (\"{word.group()}\")", i)
        self.fail(f"unexpected character {ch!r}", i)

    def not_a_key(self, i: int):
        ch = self.text[i : i + 1]
        word = _WORD.match(self.text, i)
        if ch == "'":
            self.fail("keys need double quotes (\"...\"), not single quotes", i)
        if word and not word.group().startswith("-"):
            self.fail(f"keys need double quotes: write \"{word.group()}\"", i)
        self.fail("expected a key in double quotes", i)

    def string(self, i: int) -> tuple[str, int]:
        try:
            value, end = scanstring(self.text, i + 1, True)
        except json.JSONDecodeError as e:
            self.fail(e.msg, e.pos)
        if _SURROGATE.search(value):  # only a \uXXXX escape makes one; no UTF-8 text can hold it
            self.fail("a \\uXXXX escape in this string is half of a UTF-16 surrogate pair, which is no "
                      "character", i)
        return value, end

    def obj(self, i: int, path: Path) -> tuple[dict, int]:
        out: dict = {}
        i = self.skip(i)
        if self.text[i : i + 1] == "}":
            return out, i + 1
        while True:
            i = self.skip(i)
            if self.text[i : i + 1] != '"':
                self.not_a_key(i)
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
            if ch == '"':
                self.fail("expected ',' before this key (or '}' to end the object)", i)
            if ch != ",":
                self.fail("expected ',' or '}' in an object", i)
            i = self.after_comma(i, "}")

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
            if ch and ch in '"{[-0123456789tfn':
                self.fail("expected ',' before this item (or ']' to end the array)", i)
            if ch != ",":
                self.fail("expected ',' or ']' in an array", i)
            i = self.after_comma(i, "]")

    def after_comma(self, comma: int, close: str) -> int:
        """Where the next member starts; a comma just before `close` is an error at the comma."""
        i = self.skip(comma + 1)
        if self.text[i : i + 1] == close:
            self.fail("trailing commas are not allowed in JSON; remove this comma", comma)
        return i


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
