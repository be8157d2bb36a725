"""The command line: validate (static, torch-free, exit codes, formats), schema, nodes, graph."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from segflow.cli import main
from segflow.workflow import catalogue
from segflow.workflow.schema import render

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
BROKEN = ROOT / "tests" / "broken"


def test_every_shipped_workflow_validates(capsys):
    assert WORKFLOWS, "no workflows shipped"
    assert main(["validate", *map(str, WORKFLOWS)]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid") == len(WORKFLOWS)


def test_validate_exit_code_and_formats(capsys):
    bad = str(BROKEN / "unknown_key.json")
    assert main(["validate", bad]) == 1
    assert "error[unknown_key] node 'optimizer' at nodes[3].config.learning_rte" in capsys.readouterr().out
    assert main(["validate", "--format", "json", bad, str(WORKFLOWS[0])]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["valid"] for r in report] == [False, True]
    assert report[0]["issues"][0]["code"] == "unknown_key" and report[0]["issues"][0]["line"] == 7
    assert main(["validate", "--format", "github", bad]) == 1
    assert capsys.readouterr().out.startswith(f"::error file={bad},line=7,col=")


def test_validate_is_static_and_check_paths_is_not(tmp_path, capsys):
    # data/x does not exist on this machine: not an error for plain validate
    good = tmp_path / "wf.json"
    good.write_text((BROKEN / "unknown_key.json").read_text().replace("learning_rte", "learning_rate"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", "--check-paths", str(good)]) == 1
    assert "path_not_found" in capsys.readouterr().out


def test_validate_never_imports_torch_or_monai():
    code = ("import sys; from segflow.cli import main; rc = main(['validate', *sys.argv[1:]]);"
            "heavy = sorted(m for m in ('torch', 'monai', 'albumentations', 'nibabel') if m in sys.modules);"
            "print('HEAVY', heavy); raise SystemExit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "HEAVY []" in out.stdout


def test_checked_in_schema_is_current_and_validates_every_workflow():
    checked_in = (ROOT / "schemas" / "workflow.schema.json").read_text()
    assert checked_in == render(), "schemas/workflow.schema.json is stale: run `segflow schema`"
    schema = json.loads(checked_in)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for wf in WORKFLOWS:
        errors = list(validator.iter_errors(json.loads(wf.read_text())))
        assert not errors, f"{wf.name}: {errors[0].message}"


def test_schema_rejects_what_validate_rejects():
    validator = jsonschema.Draft202012Validator(json.loads(render()))
    for name in ("unknown_key", "unknown_node_type", "bad_value"):
        assert list(validator.iter_errors(json.loads((BROKEN / f"{name}.json").read_text()))), name


# (node type, key, value, what `segflow validate` says): spellings the word rule maps onto a value,
# and near misses it does not, through the command line; the schema must agree either way
# (tests/test_words.py tries every word field the same way, through the config classes)
SPELLINGS = [
    ("Optimizer", "optimizer_type", "adamw", True), ("Optimizer", "optimizer_type", " SGD ", True),
    ("Optimizer", "optimizer_type", "adamx", False), ("Optimizer", "fused", None, True),
    ("Optimizer", "fused", "null", True), ("Optimizer", "fused", "sometimes", False),
    ("LossFunction", "loss_type", "Dice-CE", True), ("LossFunction", "loss_type", "cross entropy", True),
    ("LossFunction", "loss_type", "dice+ce", False), ("Trainer", "lr_schedule", None, True),
    ("Trainer", "lr_schedule", "Cosine", True), ("Trainer", "lr_schedule", "null", True), ("Trainer", "lr_schedule", "cosine-annealing", True),
    ("Trainer", "mixed_precision", "BFloat16", True), ("Trainer", "mixed_precision", "amp", True),
    ("Trainer", "mixed_precision", None, False), ("Trainer", "device", " CUDA:1 ", True),
    ("Trainer", "device", "gpu", True), ("Trainer", "device", "GPU:1", True), ("Predictor", "device", " Gpu ", True),
    ("Trainer", "device", "tpu", False), ("Trainer", "device", "cuda:", False), ("Trainer", "device", "gpu0", False),
    ("Predictor", "device", "ｃｐｕ", False), ("UNet2D", "norm", "Instance", True),
    ("MedicalSegmentationLoader", "num_workers", "AUTO", True), ("MedicalSegmentationLoader", "size_mode", "Patches", True),
    ("ModelExport", "format", "PT2", True), ("ModelExport", "format", "torch-export", True),
    ("ModelExport", "format", "torch export", True), ("ModelExport", "format", "JIT", True),
    ("Evaluator", "metrics", "Dice, Jaccard,hd95", True), ("Evaluator", "metrics", ["DICE", "hd-95"], True),
    ("Evaluator", "metrics", "dice iou", False), ("Evaluator", "metrics", [], False),
    ("Evaluator", "metrics", ["dice", "volume"], False), ("Predictor", "tta", "Flips", True),
    ("Predictor", "tta", ["Scale", "flip"], True), ("Predictor", "tta", "rotate", False),
    ("Trainer", "lr_schedule", "Cosine Annealing", True), ("ModelExport", "format", "Torch Export", True),
    ("MedicalSegmentationLoader", "cache", "Memory", True),
    ("MedicalSegmentationLoader", "augmentation_strength", "Medium", True),
    ("MedicalSegmentationLoader", "normalization", "ZScore", True),
    ("MedicalSegmentationLoader", "normalization", "CT", True),
    ("Evaluator", "metrics", "dice, surface dice", True), ("Evaluator", "metrics", "dice,,iou", False),
]


@pytest.mark.parametrize("node_type,key,value,valid", SPELLINGS)
def test_schema_takes_the_spellings_validate_takes(node_type, key, value, valid, tmp_path, capsys):
    wf = json.loads((ROOT / "workflows" / "train_evaluate_unet.json").read_text())
    next(n for n in wf["nodes"] if n["type"] == node_type).setdefault("config", {})[key] = value
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    assert (main(["validate", str(path)]) == 0) is valid, capsys.readouterr().out
    errors = list(jsonschema.Draft202012Validator(json.loads(render())).iter_errors(wf))
    assert (not errors) is valid, [e.message for e in errors]


def test_node_reference_is_current():
    assert (ROOT / "docs" / "nodes.md").read_text() == catalogue.markdown(), \
        "docs/nodes.md is stale: run `segflow nodes --format markdown > docs/nodes.md`"


def test_nodes_command(capsys):
    assert main(["nodes"]) == 0
    assert "UNet2D" in capsys.readouterr().out
    assert main(["nodes", "Optimizer"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate" in out and "alias: lr" in out
    assert main(["nodes", "Optimiser"]) == 1
    assert "did you mean 'Optimizer'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_command(fmt, capsys):
    assert main(["graph", str(ROOT / "workflows" / "seed_unet.json"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "data_loader" in out and "train_loader to train_loader" in out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the messages on a machine without CUDA")
def test_run_checks_the_world_before_any_node_starts(tmp_path, monkeypatch, capsys):
    # workflows/seed_unet.json asks for CUDA and a data folder this machine does not have: both reported at once
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(ROOT / "workflows" / "seed_unet.json")]) == 1
    err = capsys.readouterr().err
    assert "error[path_not_found] node 'data_loader' at nodes[0].config.data_dir" in err
    assert "error[device_unavailable] node 'trainer' at nodes[4].config.device" in err
    assert not (tmp_path / "runs").exists()  # nothing was started, nothing written


@pytest.mark.parametrize("command", ["graph workflows/train_evaluate_unet.json", "nodes", "nodes Trainer",
                                     "validate workflows/quickstart.json workflows/seed_unet.json"])
def test_a_closed_pipe_ends_quietly(command):
    """`segflow graph wf.json | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "segflow", *command.split()], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and err == "", err
