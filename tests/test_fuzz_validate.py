"""`segflow validate` on generated files never ends in a traceback: every file gets exit 0 or 1, and
every problem a code and a place (line:column, or a command-line option).

The files are mutations of the shipped workflows and of tests/broken: random JSON values put at
random places, keys and items deleted or duplicated, odd unicode, deep nesting, numbers longer
than Python converts, broken syntax, other text encodings. Seeded, so a failure repeats; the
default run tries a few hundred files, `-m slow` thousands. The inputs that once ended in a
traceback are kept below as plain tests.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segflow.cli import main
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "tests" / "broken").glob("*.json"))
TEXTS = [p.read_text() for p in SOURCES]
QUICKSTART = json.loads((ROOT / "workflows" / "quickstart.json").read_text())
TRAIN_EVALUATE = json.loads((ROOT / "workflows" / "train_evaluate_unet.json").read_text())


@dataclass
class Raw:
    """Text written into the file as it is: what json.dumps cannot write (a 5,000-digit number, NaN,
    a lone surrogate escape, 1,000 levels of brackets)."""

    text: str


@dataclass
class Obj:
    """A JSON object as its members in order, so a key can appear twice."""

    pairs: list


def tree(value):
    if isinstance(value, dict):
        return Obj([[k, tree(v)] for k, v in value.items()])
    if isinstance(value, list):
        return [tree(v) for v in value]
    return value


def dump(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def containers(value, out=None) -> list:
    """Every object and array in the tree, the root first."""
    out = [] if out is None else out
    if isinstance(value, (Obj, list)):
        out.append(value)
        for child in (v for _, v in value.pairs) if isinstance(value, Obj) else value:
            containers(child, out)
    return out


NAMES = st.sampled_from(["name", "type", "config", "nodes", "links", "seed", "workflow", "device", "source_node",
                         "target_port", "data_dir", "epochs", "in_channels", "roi_size", "checkpoint_path", "lr"])
ODD_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", " ", "²", "٣", "\u200b", "ｃｐｕ", "gpu", "GPU:1", "cuda:99", "tpu", "NaN", "[1, 2", "{", "null", "None",
     "1e999", "-0", "0x10", "８", "Trainer", "UNet2D", "model", "trainer", "data_loader"])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | ODD_TEXT)
RAW = st.sampled_from(["NaN", "Infinity", "-Infinity", '"\\ud800"', '"\\udc00x"', "1e400", "-1e400"]).map(Raw) | \
    st.integers(4000, 6000).map(lambda n: Raw("9" * n)) | \
    st.integers(90, 1500).map(lambda n: Raw("[" * n + "]" * n)) | \
    st.integers(90, 1500).map(lambda n: Raw('{"a": ' * n + "1" + "}" * n)) | \
    st.integers(500, 6000).map(lambda n: Raw(json.dumps("[" * n + "]" * n)))
VALUES = st.recursive(SCALARS | RAW, lambda inner: st.lists(inner, max_size=4)
                      | st.lists(st.tuples(NAMES | ODD_TEXT, inner), max_size=4).map(lambda p: Obj([list(x) for x in p])),
                      max_leaves=8)


def mutate_tree(draw, doc) -> None:
    """One change at a random object or array: a value replaced, a member deleted, duplicated or added."""
    target = draw(st.sampled_from(containers(doc)))
    members = target.pairs if isinstance(target, Obj) else target
    action = draw(st.sampled_from(["replace", "delete", "duplicate", "add"] if members else ["add"]))
    if action == "add":
        value = draw(VALUES)
        members.append([draw(NAMES | ODD_TEXT), value] if isinstance(target, Obj) else value)
        return
    i = draw(st.integers(0, len(members) - 1))
    if action == "replace":
        new = draw(VALUES)
        if isinstance(target, Obj):
            members[i][1] = new
        else:
            members[i] = new
    elif action == "delete":
        del members[i]
    else:
        members.insert(i, list(members[i]) if isinstance(target, Obj) else members[i])


SYNTAX = st.sampled_from([",", "}", "]", "{", "[", ":", '"', "'", "//", "/* x */", "# x\n", "\\", "NaN", "True",
                          "\n", " ", "\x00", "\ufeff", "é", ",}", ", ]", "tru", "-", "0", "1e", "\t"])


def mutate_text(draw, text: str) -> str:
    """One change to the characters: something inserted, deleted or cut off."""
    at = draw(st.integers(0, len(text)))
    action = draw(st.sampled_from(["insert", "delete", "truncate"]))
    if action == "insert":
        return text[:at] + draw(SYNTAX) + text[at:]
    if action == "delete":
        return text[:at] + text[at + draw(st.integers(1, 8)):]
    return text[:at]


def encode(draw, text: str) -> bytes:
    how = draw(st.sampled_from(["utf-8"] * 6 + ["latin-1", "utf-16", "utf-8-sig", "cp1252"]))
    return text.encode(how, errors="replace")


@st.composite
def files(draw) -> tuple[bytes, list[str]]:
    """A file's bytes, and some --set overrides for the same file."""
    text = draw(st.sampled_from(TEXTS))
    try:
        doc = tree(json.loads(text))
    except ValueError:
        doc = None
    if doc is not None and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            mutate_tree(draw, doc)
        text = dump(doc)
    for _ in range(draw(st.integers(0, 2))):
        text = mutate_text(draw, text)
    sets = draw(st.lists(st.tuples(NAMES | ODD_TEXT, NAMES, st.sampled_from(["2", "x", "[1,", "null", "1" * 5000,
                                                                                 "[" * 3000])), max_size=2))
    return encode(draw, text), [f"{node}.{key}={value}" for node, key, value in sets]


def check_one(path: Path, content: bytes, sets: list[str]) -> None:
    path.write_bytes(content)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["validate", "--format", "json", str(path)])
    assert code in (0, 1)
    (report,) = json.loads(out.getvalue())
    assert report["valid"] is (code == 0)
    for issue in report["issues"]:
        assert issue["code"] and issue["message"], issue
        assert issue["line"] is not None and issue["column"] is not None, issue
    try:
        spec.load(path, sets=sets)
    except WorkflowError as e:
        assert e.issues and all(i.code for i in e.issues)


# seeded (derandomize), nothing stored between runs, no time limit per case (a deep file takes longer)
FUZZ = dict(derandomize=True, database=None, deadline=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One file, rewritten for each generated case."""
    return tmp_path_factory.mktemp("fuzz") / "wf.json"


@settings(max_examples=300, **FUZZ)
@given(case=files())
def test_generated_files_end_in_located_errors(scratch, case):
    check_one(scratch, *case)


@pytest.mark.slow
@settings(max_examples=5000, **FUZZ)
@given(case=files())
def test_many_generated_files_end_in_located_errors(scratch, case):
    check_one(scratch, *case)


def quickstart(change, base=QUICKSTART) -> str:
    doc = json.loads(json.dumps(base))
    change(doc)
    return json.dumps(doc, indent=1, ensure_ascii=False)


def set_in(path: tuple, value):
    def change(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return change


SELF_LINK = {"source_node": "trainer", "source_port": "model", "target_node": "trainer", "target_port": "model"}
# what the fuzzer found (each a traceback once) -> (code, JSON path) of the error that replaces it
FOUND = {
    "nesting 1,000 levels deep": ("[" * 1000 + "]" * 1000, "json_syntax", ""),
    "a string value holding deep brackets": (
        quickstart(set_in(("nodes", 0, "config", "batch_size"), "[" * 5000 + "]" * 5000)),
        "bad_value", "nodes[0].config.batch_size"),
    "an integer of 5,000 digits": (
        quickstart(set_in(("seed",), 1)).replace('"seed": 1', '"seed": ' + "9" * 5000), "json_syntax", ""),
    "a node name that is a list": (quickstart(set_in(("nodes", 1, "name"), ["model"])), "bad_value",
                                   "nodes[1].name"),
    "a node name that is an object": (quickstart(set_in(("nodes", 1, "name"), {"a": 1})), "bad_value",
                                      "nodes[1].name"),
    "a node name that is a number": (quickstart(set_in(("nodes", 1, "name"), 7)), "bad_value", "nodes[1].name"),
    "a node name that is null": (quickstart(set_in(("nodes", 1, "name"), None)), "bad_value", "nodes[1].name"),
    "a seed in superscript digits": (quickstart(set_in(("seed",), "²")), "bad_value", "seed"),
    "a link from a node to itself": (quickstart(set_in(("links",), [SELF_LINK]), TRAIN_EVALUATE), "cycle",
                                     "links[0]"),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_what_the_fuzzer_found_ends_in_a_located_error(name, tmp_path, capsys):
    text, code, path = FOUND[name]
    file = tmp_path / "wf.json"
    file.write_text(text)
    assert main(["validate", "--format", "json", str(file)]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert (code, path) in {(i["code"], i["path"]) for i in report["issues"]}, report["issues"]
    assert all(i["line"] is not None for i in report["issues"])


def test_a_file_that_is_not_utf8_is_named_so_where_it_stops_being_utf8(tmp_path, capsys):
    file = tmp_path / "wf.json"
    file.write_bytes(quickstart(set_in(("description",), "café")).encode("latin-1"))
    assert main(["validate", str(file)]) == 1
    out = capsys.readouterr().out
    assert f"{file}:4:" in out and "error[json_syntax]" in out and "not UTF-8" in out and "save the file as UTF-8" in out


@pytest.mark.parametrize("node", [["model"], {"a": 1}, 7, None])
def test_set_naming_a_missing_node_when_another_name_is_not_text(node, tmp_path):
    """--set's did-you-mean looks only at the names that are text."""
    file = tmp_path / "wf.json"
    file.write_text(quickstart(set_in(("nodes", 1, "name"), node)))
    with pytest.raises(WorkflowError) as e:
        spec.load(file, sets=["modle.depth=3"])
    unknown = next(i for i in e.value.issues if i.code == "unknown_node")
    assert "no node named 'modle'" in unknown.message
    assert unknown.hint == "nodes: data_loader, loss, optimizer, trainer"
