"""What a person reads when a workflow is wrong: every problem in one pass (static, and the run's
preflight), JSON syntax errors that name the mistake, devices worded for people."""
import functools
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segflow.cli import build_parser, main
from segflow.nodes import data_preflight
from segflow.nodes.base import DEVICE_PATTERN, canonical_device
from segflow.nodes.inference import CheckpointLoaderConfig, PredictorConfig
from segflow.nodes.training import TrainerConfig
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError
from segflow.workflow.schema import build_schema

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "workflows" / "quickstart.json").read_text()


def issues(text: str):
    with pytest.raises(WorkflowError) as e:
        spec.loads(text, "wf.json")
    return e.value.issues


# ---- every problem at once ----

# tests/broken/every_kind.json: (code, JSON path) of each mistake in it, in file order
EVERY_KIND = [
    ("bad_value", "seed"),
    ("unknown_key", "descriptoin"),
    ("in_channels_mismatch", "nodes[1].config.in_channels"),  # a node check, though other nodes are broken
    ("bad_value", "nodes[2].config.loss_type"),
    ("duplicate_key", "nodes[3].config.learning_rate"),
    ("bad_value", "nodes[5].config.roi_size"),  # Predictor.check against the loader
    ("duplicate_node_name", "nodes[6].name"),
    ("bad_value", "nodes[6].config.device"),  # the renamed node's own config is still checked
    ("unknown_node_type", "nodes[7].type"),
    ("unknown_key", "nodes[8].config.max_imges"),
    ("unknown_port", "links[0].source_port"),
    ("port_type_mismatch", "links[1]"),
    # links[2] goes into the node of unknown type: its error says it all, the link adds none
    ("unknown_link_node", "links[3].source_node"),
]


def test_one_validate_reports_one_mistake_of_each_kind(capsys):
    path = ROOT / "tests" / "broken" / "every_kind.json"
    assert main(["validate", "--format", "json", str(path)]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert [(i["code"], i["path"]) for i in report["issues"]] == EVERY_KIND
    assert all(i["line"] is not None for i in report["issues"])


def test_node_checks_wait_for_what_they_depend_on():
    """A network is not checked against a loader whose own config is wrong (it would be judged by
    defaults the file did not ask for), nor a node whose inputs a refused link leaves in doubt."""
    doc = json.loads(QUICKSTART)
    doc["nodes"][0]["config"]["spatial_dims"] = "four"  # the loader is broken...
    doc["nodes"][1]["config"]["in_channels"] = 3  # ...so this mismatch cannot be judged yet
    assert [(i.code, i.path) for i in issues(json.dumps(doc))] == [("bad_value", "nodes[0].config.spatial_dims")]
    doc = json.loads(QUICKSTART)
    doc["nodes"][1]["config"]["in_channels"] = 3
    doc["links"] = [{"source_node": "data_loader", "source_port": "dataset_inf", "target_node": "model",
                     "target_port": "dataset_info"}]
    assert [i.code for i in issues(json.dumps(doc))] == ["unknown_port"]


def test_run_reports_every_missing_path_and_the_device_before_any_node_starts(tmp_path, monkeypatch, capsys):
    doc = json.loads(QUICKSTART)
    doc["nodes"][0]["config"].pop("synthetic")  # data/phantom2d must exist now, and does not
    (tmp_path / "splits").mkdir()
    monkeypatch.setattr(data_preflight, "available", lambda: (2 * 1024 ** 3, "a test's figure"))
    doc["nodes"][0]["config"].update(image_size=4096, batch_size=64, fold=0, splits_file="splits",  # a folder, not a file
                                     cache="disk", cache_dir="wf.json/cache")  # under a file
    doc["nodes"].insert(2, {"type": "CheckpointLoader", "name": "weights",
                            "config": {"checkpoint_path": ["fold0/best.pt", "fold1/best.pt"]}})
    doc["nodes"][-1]["config"]["device"] = "cuda:99"  # on no machine: no CUDA, or fewer devices
    path = tmp_path / "wf.json"
    path.write_text(text := json.dumps(doc, indent=1))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path)]) == 1
    found = re.findall(r":(\d+):(\d+): error\[(\w+)\] node '(\w+)' at (\S+):", capsys.readouterr().err)
    assert [f[2:] for f in found] == [("path_not_found", "data_loader", "nodes[0].config.data_dir"),
                                      ("insufficient_memory", "data_loader", "nodes[0].config.image_size"),
                                      ("path_not_found", "data_loader", "nodes[0].config.splits_file"),
                                      ("path_not_writable", "data_loader", "nodes[0].config.cache_dir"),
                                      ("path_not_found", "weights", "nodes[2].config.checkpoint_path[0]"),
                                      ("path_not_found", "weights", "nodes[2].config.checkpoint_path[1]"),
                                      ("device_unavailable", "trainer", "nodes[5].config.device")]
    assert [(int(f[0]), int(f[1])) for f in found[4:6]] == [position(text, '"fold0'), position(text, '"fold1')]
    assert not (tmp_path / "runs").exists()  # no node ran, nothing was written


def test_preflight_checks_mps_too():
    pytest.importorskip("torch")
    from segflow.nodes.base import device_findings
    from segflow.training.device import resolve_device

    try:
        resolve_device("mps")
        expected = []
    except ValueError:
        expected = ["device_unavailable"]
    assert [f.code for f in device_findings("MPS")] == expected
    assert [f.code for f in device_findings("tpu")] == ["bad_value"]


def position(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)


# ---- JSON syntax errors name the mistake ----

SYNTAX = [  # (text, what the message says, the text the error points at)
    ('{"workflow": "t",\n "nodes": [],\n}', "trailing commas are not allowed in JSON", ",\n}"),
    ('{"nodes": [1, 2, ]}', "trailing commas are not allowed in JSON", ", ]"),
    ('{"nodes": [] // the nodes\n}', "comments (// ..., /* ... */, # ...) are not allowed in JSON", "// the"),
    ('{\n  /* a note */ "nodes": []}', "comments (// ..., /* ... */, # ...) are not allowed in JSON", "/* a"),
    ("{'nodes': []}", "keys need double quotes (\"...\"), not single quotes", "'nodes'"),
    ('{"workflow": \'t\'}', "strings need double quotes (\"...\"), not single quotes", "'t'"),
    ('{"workflow": "t", nodes: []}', 'keys need double quotes: write "nodes"', "nodes:"),
    ('{"seed": NaN}', "NaN is not allowed in JSON; write null, or a number", "NaN"),
    ('{"seed": Infinity}', "Infinity is not allowed in JSON", "Infinity"),
    ('{"seed": -Infinity}', "-Infinity is not allowed in JSON", "-Infinity"),
    ('{"x": True}', "JSON writes True as true (lower case)", "True"),
    ('{"x": None}', "JSON writes None as null", "None"),
    ('{"x": dice}', 'unexpected word \'dice\': text needs double quotes ("dice")', "dice"),
    ('{"a": 1\n "b": 2}', "expected ',' before this key", '"b"'),
    ('{"a": [1 2]}', "expected ',' before this item", "2]"),
    ('\ufeff{"nodes": []}', "the file starts with a byte order mark (U+FEFF)", "\ufeff"),
]


@pytest.mark.parametrize("text,message,at", SYNTAX)
def test_syntax_errors_name_the_mistake_where_it_is(text, message, at):
    (issue,) = issues(text)
    assert issue.code == "json_syntax" and message in issue.message
    assert (issue.line, issue.column) == position(text, at)


# ---- devices ----

@pytest.mark.parametrize("config,key", [(TrainerConfig, "device"), (PredictorConfig, "device"),
                                        (CheckpointLoaderConfig, "map_location")])
def test_gpu_means_cuda_in_any_case(config, key):
    extra = {"checkpoint_path": "x.pt"} if config is CheckpointLoaderConfig else {}
    for written, meant in [("gpu", "cuda"), (" GPU:1 ", "cuda:1"), ("Gpu:01", "cuda:1"), ("CUDA", "cuda"),
                         ("MPS", "mps"), ("Auto", "auto"), ("cpu", "cpu")]:
        assert getattr(config(**extra, **{key: written}), key) == meant


def test_a_wrong_device_is_worded_for_people():
    doc = json.loads(QUICKSTART)
    doc["nodes"][-1]["config"]["device"] = "tpu"
    (issue,) = issues(json.dumps(doc))
    assert issue.message == "device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps (Apple GPUs)"


def test_the_device_option_takes_what_the_configs_take(capsys):
    assert build_parser().parse_args(["run", "wf.json", "--device", "GPU:1"]).device == "cuda:1"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "wf.json", "--device", "tpu"])
    assert e.value.code == 2
    assert "device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps (Apple GPUs)" in capsys.readouterr().err


def test_resolve_device_takes_gpu():
    torch = pytest.importorskip("torch")
    from segflow.training.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("GPU") == torch.device("cuda")
    else:
        with pytest.raises(ValueError, match="is 'cuda' but this machine has no CUDA device"):
            resolve_device("gpu")


@functools.cache
def _schema_device_patterns() -> set[str]:
    found = set()
    for variant in build_schema()["$defs"]["node"]["allOf"]:
        props = variant["then"]["properties"]["config"]["properties"]
        found |= {props[k]["pattern"] for k in ("device", "map_location") if k in props}
    return found


DEVICE_TEXT = st.text(st.sampled_from("autocpmsdgAUTOCPMSDG:019 \t\n\u00a0\u2003ｃ²-_"), max_size=9) | st.sampled_from(
    ["gpu", " cuda:12 ", "GPU:0", "MpS", "cuda:", "gpu0", "cuda:²", "cpu\n", "\u00a0cpu", "ｃｐｕ"])


@settings(max_examples=400, derandomize=True, database=None, deadline=None)  # no timing: loaded CI boxes
@given(DEVICE_TEXT)
def test_the_schema_takes_exactly_the_devices_validate_takes(text):
    (pattern,) = _schema_device_patterns()  # one rule for all three fields (the schema built once)
    try:
        canonical_device(text)
        valid = True
    except ValueError:
        valid = False
    assert (re.search(pattern, text) is not None) is valid
    assert pattern == DEVICE_PATTERN
