"""Word values: one spelling rule (segflow.nodes.words) for every word field of every node, taken
alike by the config classes (`segflow validate`) and the generated JSON schema; the schema's
patterns are valid for standard (ECMA-262, "u" flag) clients."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from segflow.nodes import registry
from segflow.nodes.words import choice_of, fold, holds_list, literal_words
from segflow.workflow.schema import render

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "schemas" / "workflow.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(json.loads(render()))
NOT_A_WORD = "not a word"


def _word_fields():
    for type_name, cls in registry.all_types().items():
        for key, field in cls.Config.model_fields.items():
            if choice_of(field):
                yield pytest.param(type_name, key, id=f"{type_name}.{key}")


def _spellings(word: str) -> set[str]:
    """`word` as people write it: any case, `-` / space / ` - ` for `_` (and for `-`), padded."""
    forms = {word, word.lower(), word.upper(), word.title(), f"  {word}\t"}
    for sep in ("_", "-", " ", " - "):
        forms |= {re.sub("[-_]", sep, f) for f in list(forms)}
    return forms


def _near_misses(word: str) -> set[str]:
    """Strings that look like `word` but fold to something else."""
    misses = {f"-{word}", f"{word}.", f"{word}_", f"{word}s_"}
    return misses | ({word.replace("_", "__", 1), word.replace("_", "_-", 1)} if "_" in word else set())


def _validate(type_name: str, key: str, value):
    """(the config's value, or None when rejected; whether the schema takes it)."""
    doc = {"workflow": "w", "nodes": [{"type": type_name, "name": "n", "config": {key: value}}]}
    schema_ok = VALIDATOR.is_valid(doc)
    try:
        return getattr(registry.get(type_name).Config(**{key: value}), key), schema_ok
    except ValidationError:
        return None, schema_ok


@pytest.mark.parametrize("type_name,key", _word_fields())
def test_every_spelling_of_every_word_is_taken_by_validate_and_the_schema(type_name, key):
    field = registry.get(type_name).Config.model_fields[key]
    rule = choice_of(field)
    table = rule.table(field.annotation)
    as_list = holds_list(field.annotation)
    words = [*literal_words(field.annotation), *rule.synonyms]
    assert words and all(fold(w) in table for w in words)
    for word in words:
        want = table[fold(word)]
        for form in sorted(_spellings(word)):
            got = _validate(type_name, key, [form] if as_list else form)
            assert got == ([want] if as_list else want, True), (form, got)
        for form in sorted(_near_misses(word) - set(table)):
            if fold(form) not in table:
                assert _validate(type_name, key, [form] if as_list else form) == (None, False), form
    if rule.takes_null:
        assert _validate(type_name, key, None) == (rule.null, True)
    if as_list:  # the one-string form, as validate splits it
        first, last = words[0], words[-1]
        assert _validate(type_name, key, f" {first.upper()},{last.replace('_', ' ')} ") == \
            (list(dict.fromkeys([table[fold(first)], table[fold(last)]])), True)
        assert _validate(type_name, key, f"{first}, {NOT_A_WORD}") == (None, False)


@pytest.mark.parametrize("type_name,key", _word_fields())
def test_a_wrong_word_is_rejected_by_both_and_the_error_names_the_choices(type_name, key):
    config = registry.get(type_name).Config
    first = literal_words(config.model_fields[key].annotation)[0]
    assert _validate(type_name, key, NOT_A_WORD) == (None, False)
    with pytest.raises(ValidationError, match=re.escape(f"'{first}'")):
        config(**{key: NOT_A_WORD})


def test_repeated_words_are_dropped_unless_the_list_is_positional():
    """A set of metrics says each once; channel_normalization says one word per image channel, so
    `Choice(keep_repeats=True)` keeps repeats. The schema takes both lists as they are."""
    assert _validate("Evaluator", "metrics", ["dice", " Dice", "iou"]) == (["dice", "iou"], True)
    assert _validate("MedicalSegmentationLoader", "channel_normalization", ["zscore", "ZSCORE", "ct zscore"]) == \
        (["zscore", "zscore", "ct_zscore"], True)
    assert _validate("MedicalSegmentationLoader", "channel_normalization", "zscore, zscore") == \
        (["zscore", "zscore"], True)


def test_every_field_with_words_follows_the_rule():
    missing = [f"{type_name}.{key}" for type_name, cls in registry.all_types().items()
               for key, field in cls.Config.model_fields.items()
               if literal_words(field.annotation) and not choice_of(field)]
    assert not missing, f"declare these with Annotated[..., Choice()]: {missing}"


def _patterns(node):
    if isinstance(node, dict):
        yield from ([node["pattern"]] if isinstance(node.get("pattern"), str) else [])
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


_ESCAPABLE = set("^$\\.*+?()[]{}|/") | set("dDsSwWbBfnrtv0123456789") | set("cuxkpP")


def _unicode_unsafe_escapes(pattern: str) -> list[str]:
    """Escapes ECMA-262 rejects under the "u" flag: a backslash before a character that is neither
    a syntax character nor an escape class (`\\ `, `\\_`; `\\-` outside a character class)."""
    bad, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            following = pattern[i + 1:i + 2]
            if following not in _ESCAPABLE and not (in_class and following == "-"):
                bad.append(pattern[i:i + 2])
            i += 2
            continue
        in_class = (in_class or ch == "[") and ch != "]"
        i += 1
    return bad


def test_the_checker_finds_the_escapes_unicode_mode_rejects():
    assert _unicode_unsafe_escapes(r"surface\ dice|a\-b|\_") == [r"\ ", r"\-", r"\_"]
    assert _unicode_unsafe_escapes(r"^\s*[\-+]?\d+\.\[x\]$") == []


def test_schema_patterns_are_valid_unicode_regexes():
    patterns = sorted(set(_patterns(json.loads(render()))))
    assert patterns
    for pattern in patterns:
        assert not _unicode_unsafe_escapes(pattern), pattern
        re.compile(pattern)
    regress = pytest.importorskip("regress")  # the ECMA-262 engine check-jsonschema uses
    for pattern in patterns:
        regress.Regex(pattern, "u")


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install -e .[dev])")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_check_jsonschema_takes_the_schema():
    out = _check_jsonschema("--check-metaschema", str(SCHEMA_FILE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_jsonschema_takes_every_workflow():
    workflows = sorted(str(p) for p in (ROOT / "workflows").glob("*.json"))
    assert workflows
    out = _check_jsonschema("--schemafile", str(SCHEMA_FILE), *workflows)
    assert out.returncode == 0, out.stdout + out.stderr
