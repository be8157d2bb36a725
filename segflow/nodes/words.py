"""One spelling rule for word values in node configs ("AdamW", "reduce-overhead", "dice").

Hand-written and GUI-saved files spell the same word many ways ("Dice-CE", "cross entropy",
" SGD "). Every word field is declared as `Annotated[Literal[...], Choice(synonyms=...)]`
(or a union or list holding such a Literal), and takes a string when its folded form equals
the folded form of one of the Literal's words or of a synonym:

    fold: strip surrounding white space, lower-case, every run of `-` and white space -> `_`

The config then holds the canonical word (or the synonym's value: "amp" -> True). The JSON
schema reads the same data (`spelling_pattern`), so a generic JSON Schema validator accepts
exactly what `segflow validate` accepts. Only ASCII case and ASCII white space fold, because
a JSON Schema pattern can say exactly those (`[aA]`, a character class) and no more.
"""
from __future__ import annotations

import re
import string
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic_core import core_schema

SPACE = " \t\n\r\f\v"
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_SEPARATORS = re.compile(r"[-\s]+", re.ASCII)
_UNSET = object()

# The same characters as regex classes; both are valid ECMA-262 ("u" flag) and Python syntax.
PAD = r"[\t\n\v\f\r ]*"
_SEPARATOR = r"(?:_|[\t\n\v\f\r -]+)"
_SYNTAX = set("^$\\.*+?()[]{}|/")


def lowered(text: str) -> str:
    """`text` without surrounding white space, in ASCII lower case: the part of `fold` that keeps
    separators (device names such as 'cuda:1')."""
    return text.strip(SPACE).translate(_LOWER)


def fold(text: str) -> str:
    """The form two spellings of one word share: ' Dice-CE ' and 'dice_ce' both fold to 'dice_ce'."""
    return _SEPARATORS.sub("_", lowered(text))


def literal_words(annotation: Any) -> tuple[str, ...]:
    """The string values of the Literals in `annotation`, looking through unions and lists."""
    if typing.get_origin(annotation) is Literal:
        return tuple(a for a in typing.get_args(annotation) if isinstance(a, str))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        return tuple(w for arg in typing.get_args(annotation) for w in literal_words(arg))
    return ()


def holds_list(annotation: Any) -> bool:
    """Whether the words of `annotation` are the items of a list (Evaluator metrics)."""
    if typing.get_origin(annotation) is list:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and \
        any(holds_list(arg) for arg in typing.get_args(annotation))


def _takes_plain_strings(annotation: Any) -> bool:
    """Whether a non-word string may be another type's lax spelling ("true" for `bool | list[...]`; not
    None, whose spellings the config reads before the words)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return any(typing.get_origin(arg) not in (list, Literal) and arg is not type(None) for arg in args)


class Choice:
    """Marks a config field as a word field: its Literal's words and these synonyms, spelt any way
    the fold rule allows. `synonyms` maps other words to what they mean (a canonical word, or a
    value of the field's other type: "amp" -> True). `null` is what JSON null and the word "null"
    (as GUIs save it) mean, for fields where null was once a setting ("fused": null -> False);
    without it null is not a word. A list of words drops repeated words (a set of metrics), unless
    `keep_repeats`: then the list is positional and a word may stand at several places (one
    normalisation per image channel)."""

    def __init__(self, synonyms: Mapping[str, Any] | None = None, *, null: Any = _UNSET, keep_repeats: bool = False):
        self.synonyms = dict(synonyms or {})
        self.null = null
        self.keep_repeats = keep_repeats

    @property
    def takes_null(self) -> bool:
        return self.null is not _UNSET

    def __repr__(self) -> str:
        extra = (f", null={self.null!r}" if self.takes_null else "") + (", keep_repeats=True" if self.keep_repeats else "")
        return f"Choice({self.synonyms!r}{extra})"

    def table(self, annotation: Any) -> dict[str, Any]:
        """Folded spelling -> value, for the words of `annotation` and the synonyms."""
        table: dict[str, Any] = {}
        spelt = [(w, w) for w in literal_words(annotation)] + list(self.synonyms.items())
        for word, value in spelt + ([("null", self.null)] if self.takes_null else []):
            key = fold(word)
            if re.search(r"^_|_$|__", key):  # the schema's pattern could not say these exactly
                raise ValueError(f"word {word!r}: no leading, trailing or doubled separators")
            if table.get(key, value) != value:
                raise ValueError(f"{word!r} would mean both {table[key]!r} and {value!r}")
            table[key] = value
        return table

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        table = self.table(source)
        if holds_list(source):
            plain = _takes_plain_strings(source)
            return core_schema.no_info_before_validator_function(
                lambda v: self._words(table, v, plain), handler(source))
        return core_schema.no_info_before_validator_function(lambda v: self._word(table, v), handler(source))

    def _word(self, table: dict[str, Any], value: Any) -> Any:
        if value is None and self.takes_null:
            return self.null
        # a string that is no word is left as written, for pydantic to name the choices
        return table.get(fold(value), value) if isinstance(value, str) else value

    def _words(self, table: dict[str, Any], value: Any, plain: bool) -> Any:
        if isinstance(value, str):
            items = value.split(",")
            if len(items) == 1 and fold(value) not in table and plain:
                return value  # "true" for `bool | list[...]`: the other type's to take
            value = [item.strip(SPACE) for item in items]
        if not isinstance(value, list):
            return value
        out: list[Any] = []
        for item in value:
            item = self._word(table, item)
            if self.keep_repeats or item not in out:
                out.append(item)
        return out


def choice_of(field: Any) -> Choice | None:
    """The Choice declared on a pydantic FieldInfo, or None for fields that take no words."""
    return next((m for m in field.metadata if isinstance(m, Choice)), None)


def spelt(folded: str) -> str:
    """A regex for every spelling of the folded word `folded` (any ASCII case, separators for _)."""
    out = []
    for ch in folded:
        if ch == "_":
            out.append(_SEPARATOR)
        elif ch in string.ascii_lowercase:
            out.append(f"[{ch}{ch.upper()}]")
        else:
            out.append("\\" + ch if ch in _SYNTAX else ch)  # escape only syntax characters ("u" flag)
    return "".join(out)


def spelling_pattern(table: Mapping[str, Any]) -> str:
    """An unanchored regex matching exactly the strings whose fold is a key of `table`."""
    return f"{PAD}(?:{'|'.join(spelt(key) for key in table)}){PAD}"
