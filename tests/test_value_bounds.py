"""Every number in every node config is checked statically: `segflow validate` accepts what the
field declares (its JSON Schema, floats finite) and rejects the rest at the field's own key.

The parametrised test feeds every numeric field of every registered node a negative number, zero,
a huge number, infinity (JSON's 1e400) and NaN (a GUI-saved "nan"). The values issue 21 found
passing `validate` are kept as plain tests with the words of their messages.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import jsonschema
import pytest

from segflow.nodes import registry
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError

ROOT = Path(__file__).resolve().parents[1]
INF = "@@INF@@"  # written into the file as 1e400, which JSON readers take as infinity


def node_types() -> dict[str, type]:
    return {name: cls for name, cls in registry.all_types().items() if name == cls.type}


def _numeric(schema: dict) -> bool:
    text = json.dumps(schema)
    return '"integer"' in text or '"number"' in text


def numeric_fields() -> list[tuple[str, str]]:
    found = []
    for name, cls in sorted(node_types().items()):
        props = cls.Config.model_json_schema()["properties"]
        found += [(name, key) for key, schema in props.items() if _numeric(schema)]
    return found


def _members(schema: dict) -> list[dict]:
    return schema.get("anyOf", [schema])


def _probe_value(schema: dict, default, probe):
    """The value written to test `probe`: the number itself where the field takes a number, else
    a list shaped like the field's (its default, or the smallest it takes) with one number replaced:
    the last for a huge probe, the first for the others, so that [low, high] pairs stay ordered."""
    members = _members(schema)
    if any(m.get("type") in ("integer", "number") for m in members):
        return probe
    if not any(m.get("type") == "array" for m in members):  # an object of lists: regions
        return {"region": [probe]}
    array = next(m for m in members if m.get("type") == "array")
    sample = copy.deepcopy(default) if isinstance(default, list) and default else None
    if sample is None:
        sample = [_sample_item(array)] * max(array.get("minItems", 2), 2)
    at = -1 if probe == PROBES["huge"] else 0
    if isinstance(sample[at], list):
        sample[at][at] = probe
    else:
        sample[at] = probe
    return sample


def _sample_item(array: dict):
    items = array.get("items") or (array.get("prefixItems") or [{}])[0]
    item = _members(items)[0]
    if item.get("type") == "array":
        return [_sample_item(item)] * max(item.get("minItems", 2), 2)
    low = item.get("minimum", item.get("exclusiveMinimum", 0))
    return max(1, low + 1) if item.get("type") == "integer" else float(max(1, low + 1))


def _declared_valid(cls, key: str, value) -> bool:
    """What the field declares: its JSON Schema accepts the value, and every float is finite."""
    def finite(v) -> bool:
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return not (v == INF or (isinstance(v, float) and not math.isfinite(v)) or v == "nan")
    if not finite(value):
        return False
    return jsonschema.Draft202012Validator(cls.Config.model_json_schema()).is_valid({key: value})


def _issues(node_type: str, key: str, value) -> list:
    doc = {"workflow": "bounds", "nodes": [{"type": node_type, "name": "n", "config": {key: value}}]}
    text = json.dumps(doc).replace(json.dumps(INF), "1e400")
    try:
        spec.loads(text, file="bounds.json")
    except WorkflowError as e:
        return [i for i in e.issues if i.severity == "error"]
    return []


PROBES = {"negative": -1, "zero": 0, "huge": 1e18, "infinity": INF, "nan": "nan"}


@pytest.mark.parametrize("node_type,key", numeric_fields())
def test_every_numeric_field_is_valid_by_declaration_or_rejected_at_its_key(node_type, key):
    cls = node_types()[node_type]
    schema = cls.Config.model_json_schema()["properties"][key]
    default = cls.Config.model_fields[key].default
    at_key = re.compile(rf"^nodes\[0\]\.config\.{re.escape(key)}(\[|\.|$)")
    for name, probe in PROBES.items():
        value = _probe_value(schema, default, probe)
        located = [i for i in _issues(node_type, key, value) if at_key.match(i.path)]
        if _declared_valid(cls, key, value):
            assert not located, f"{node_type}.{key} = {value!r} ({name}) is valid by its schema but: {located}"
        else:
            assert [i.code for i in located][:1] == ["bad_value"], \
                f"{node_type}.{key} = {value!r} ({name}) is invalid by its schema, yet no bad_value at its key"
            assert all("Input should be" not in i.message or name == "nan" for i in located
                       if re.search("finite|above|at least|more than", i.message))


@pytest.mark.parametrize("node_type,key", numeric_fields())
def test_every_integer_has_an_upper_bound_in_the_schema(node_type, key):
    schema = node_types()[node_type].Config.model_json_schema()["properties"][key]

    def integers(s):
        if isinstance(s, dict):
            if s.get("type") == "integer":
                yield s
            for v in s.values():
                yield from integers(v)
        elif isinstance(s, list):
            for v in s:
                yield from integers(v)
    for s in integers(schema):
        assert "maximum" in s or "exclusiveMaximum" in s or "enum" in s, f"{node_type}.{key}: {s}"


def _mutated(workflow: str, node: str, key: str, value) -> str:
    doc = json.loads((ROOT / "workflows" / f"{workflow}.json").read_text())
    found = [n for n in doc["nodes"] if n["name"] == node]
    if found:
        found[0].setdefault("config", {})[key] = value
    else:
        doc["nodes"].append({"type": node, "name": node.lower(), "config": {key: value}})
    return json.dumps(doc)


# The values issue 21 found passing validate, each with the words its error must hold.
ONCE_ACCEPTED = [
    ("quickstart", "data_loader", "seed", -1, "seed must be at least 0, got -1"),
    ("quickstart", "trainer", "seed", -1, "seed must be at least 0"),
    ("quickstart", "trainer", "seed", 2**40, "is above 4,294,967,295: seeds are 32-bit"),
    ("quickstart", "data_loader", "seed", 2**70, "is above 4,294,967,295"),
    ("quickstart", "optimizer", "learning_rate", INF, "learning_rate must be a finite number"),
    ("quickstart", "data_loader", "ct_window", [0, INF], "ct_window[1] must be a finite number"),
    ("phantom3d_unet", "data_loader", "target_spacing", [INF, 1, 1], "target_spacing[0] must be a finite number"),
    ("quickstart", "loss", "class_weights", [1, INF], "class_weights[1] must be a finite number"),
    ("quickstart", "loss", "gamma", INF, "gamma must be a finite number"),
    ("quickstart", "loss", "smooth", INF, "smooth must be a finite number"),
    ("quickstart", "trainer", "gamma", INF, "gamma must be a finite number"),
    ("evaluate_unet", "predictor", "tta_scales", [1, INF], "tta_scales[1] must be a finite number"),
    ("train_evaluate_unet", "export", "tolerance", INF, "tolerance must be a finite number"),
    ("evaluate_unet", "evaluator", "surface_tolerance", INF, "surface_tolerance must be a finite number"),
    ("quickstart", "data_loader", "num_workers", -1, "num_workers must be at least 0, got -1"),
    ("quickstart", "data_loader", "batch_size", 1e18, "batch_size 1e+18 is above 65,536"),
    ("quickstart", "trainer", "gradient_accumulation_steps", 1e18, "is above 1024: the effective batch"),
    ("quickstart", "trainer", "warmup_epochs", 1e18, "warmup_epochs 1e+18 is above 100,000"),
    ("quickstart", "trainer", "val_roi_size", [0, 0], "val_roi_size[0] must be at least 8, got 0"),
    ("quickstart", "data_loader", "image_size", 8192, "image_size 8192 is above 4096"),
    ("evaluate_unet", "predictor", "roi_size", 1, "roi_size must be at least 8, got 1"),
    ("evaluate_unet", "overlay", "slice_axis", 9, "slice_axis 9 is above 2"),
    ("quickstart", "trainer", "monitor", "val_nosuchmetric", "is not a history column the Trainer writes"),
    ("train_evaluate_unet", "export", "opset", 7, "opset must be at least 13, got 7"),
    ("quickstart", "SegResNet", "blocks_down", [1, 0, 2, 4], "blocks_down[1] must be at least 1, got 0"),
    ("quickstart", "DeepLabV3Plus", "atrous_rates", [6, 0, 18], "atrous_rates[1] must be at least 1, got 0"),
]


@pytest.mark.parametrize("workflow,node,key,value,words", ONCE_ACCEPTED,
                         ids=[f"{c[1]}.{c[2]}={c[3]!r}" for c in ONCE_ACCEPTED])
def test_values_that_once_passed_validate_are_rejected_at_their_key(workflow, node, key, value, words):
    text = _mutated(workflow, node, key, value).replace(json.dumps(INF), "1e400")
    with pytest.raises(WorkflowError) as e:
        spec.loads(text, file=f"{workflow}.json")
    errors = [i for i in e.value.issues if i.severity == "error"]
    at_key = [i for i in errors if re.search(rf"\.config\.{key}(\[|$)", i.path)]
    assert at_key, [i.format() for i in errors]
    assert any(words in i.message for i in at_key), [i.message for i in at_key]
    assert all(i.line for i in at_key)  # a place in the file


def test_monitor_hint_lists_the_columns_and_classes_are_counted():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "trainer", "monitor", "val_dice_2"), file="q.json")
    [issue] = e.value.issues
    assert issue.code == "unknown_monitor" and "names class 2, but there are 2 classes" in issue.message
    spec.loads(_mutated("quickstart", "trainer", "monitor", "val_dice_case_mean_1"), file="q.json")
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "trainer", "monitor", "val_nosuch"), file="q.json")
    assert "val_dice_case_mean" in e.value.issues[0].hint and "train_loss" in e.value.issues[0].hint


def test_val_roi_size_is_checked_against_the_network():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "trainer", "val_roi_size", [64, 60]), file="q.json")
    [issue] = e.value.issues
    assert issue.path == "nodes[4].config.val_roi_size" and "divisible by 8" in issue.message
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "trainer", "val_roi_size", [64, 64, 64]), file="q.json")
    assert "loads 2-D data" in e.value.issues[0].message


def test_a_value_that_fits_no_member_of_a_union_is_reported_once_without_type_tags():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "data_loader", "image_size", [64, "x"]), file="q.json")
    [issue] = e.value.issues
    assert issue.path == "nodes[0].config.image_size[1]"
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "data_loader", "num_workers", "many"), file="q.json")
    [issue] = e.value.issues
    assert issue.path == "nodes[0].config.num_workers" and "'auto'" in issue.message


def test_an_old_opset_is_a_warning():
    wf = spec.loads(_mutated("train_evaluate_unet", "export", "opset", 17), file="t.json")
    assert [(i.code, i.severity) for i in wf.warnings] == [("old_opset", "warning")]


# --- validated means it runs: mutated workflows run for real ---------------------------------------

QUICK_NODES = {"data_loader": "MedicalSegmentationLoader", "model": "UNet2D", "loss": "LossFunction",
               "optimizer": "Optimizer", "trainer": "Trainer"}
TINY = ["data_loader.image_size=32", "data_loader.synthetic_cases=8", "data_loader.batch_size=4",
        "data_loader.num_workers=0", "trainer.epochs=1", "trainer.device=\"cpu\"", "model.base_channels=8",
        "model.depth=3", "trainer.postprocessing=\"none\"", "trainer.tracking=\"none\""]
# Largest values that stay cheap on a CPU (a maximum of epochs, cases or channels would run for hours)
CHEAP_MAXIMA = {"patience", "save_frequency", "keep_last", "validate_every", "warmup_epochs", "step_size", "T_max",
                "lr_patience", "batch_size", "prefetch_factor", "grad_histogram_every", "sw_batch_size",
                "gradient_accumulation_steps", "seed", "learning_rate", "eps", "weight_decay", "num_folds"}


def _edge_values(nodes: dict[str, str]) -> list[tuple[str, str, object]]:
    """(node, key, value) for the numeric fields of `nodes` (name -> type) at 0, at their declared
    minimum and (where cheap) their maximum."""
    found = []
    for node, node_type in nodes.items():
        cls = node_types()[node_type]
        props = cls.Config.model_json_schema()["properties"]
        for key, schema in props.items():
            numbers = [m for m in _members(schema) if m.get("type") in ("integer", "number")]
            if not numbers:
                continue
            bounds = {0, numbers[0].get("minimum", 0)}
            if key in CHEAP_MAXIMA and "maximum" in numbers[0]:
                bounds.add(numbers[0]["maximum"])
            found += [(node, key, v) for v in sorted(bounds)]
    return found


def _run_edges(source: Path, cases: list[tuple[str, str, object]], sets: list[str], tmp_path: Path) -> int:
    """Run `source` once per edge value `validate` accepts; assert none ends in an unlocated error
    (anything but a WorkflowError at a key or a worded ValueError of a named node). The runs made."""
    from segflow.workflow.errors import NodeRunError
    from segflow.workflow.executor import run_workflow

    data = [f"data_loader.data_dir=\"{tmp_path / 'phantom'}\""]
    ran = unlocated = 0
    for i, (node, key, value) in enumerate(cases):
        sets_here = [*sets, *data, f"{node}.{key}={json.dumps(value)}"]
        try:
            spec.load(source, sets=sets_here)
        except WorkflowError:
            continue  # rejected statically: the parametrised test covers where
        try:
            run_workflow(source, sets=sets_here, run_dir=tmp_path / f"run{i}", progress=False, log=lambda s: None)
        except WorkflowError as e:
            assert all(issue.path for issue in e.issues), (node, key, value, e)
            print(f"{node}.{key}={value!r}: stopped at {e.issues[0].path}: {e.issues[0].message}")
        except NodeRunError as e:
            print(f"{node}.{key}={value!r}: {e}")
            unlocated += not isinstance(e.__cause__, ValueError)
        ran += 1
    assert unlocated == 0
    return ran


@pytest.mark.slow
def test_validated_mutations_of_the_quickstart_run_or_fail_located(tmp_path, monkeypatch):
    """Every edge value of the quickstart's nodes that `validate` accepts runs, or fails located."""
    monkeypatch.chdir(tmp_path)
    assert _run_edges(ROOT / "workflows" / "quickstart.json", _edge_values(QUICK_NODES), TINY, tmp_path) >= 10


# 2-D networks at small sizes, each in the quickstart in place of its UNet2D
SMALL_2D = {"AttentionUNet": {"spatial_dims": 2}, "DeepLabV3Plus": {},
            "TransUNet": {"img_size": 64, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "depth": 2},
            "UNETR": {"spatial_dims": 2, "img_size": 64, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
            "SwinUNETR": {"spatial_dims": 2, "feature_size": 12}, "SegResNet": {"spatial_dims": 2},
            "VNet": {"spatial_dims": 2}, "DynUNet": {"spatial_dims": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2]}}


@pytest.mark.slow
@pytest.mark.parametrize("network", SMALL_2D)
def test_validated_edge_values_of_every_network_run_or_fail_located(network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = json.loads((ROOT / "workflows" / "quickstart.json").read_text())
    doc["nodes"][1] = {"type": network, "name": "model", "config": {"in_channels": 1, "out_channels": 2,
                                                                    **SMALL_2D[network]}}
    source = tmp_path / f"{network}.json"
    source.write_text(json.dumps(doc))
    cases = [c for c in _edge_values({"model": network}) if c[1] != "in_channels"]
    sets = [s for s in TINY if not s.startswith("model.")] + ["data_loader.image_size=64"]
    assert _run_edges(source, cases, sets, tmp_path) >= 2


def test_loss_lists_are_tied_to_the_classes_and_dimensions():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "loss", "class_weights", [1, 1, 1]), file="q.json")
    [issue] = e.value.issues
    assert issue.code == "loss_label_mismatch" and "3 class_weights, but there are 2 classes" in issue.message
    spec.loads(_mutated("quickstart", "loss", "class_weights", [0.3, 0.7]), file="q.json")
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "loss", "boundary_spacing", [1, 1, 3]), file="q.json")
    assert "loads 2-D data" in [i for i in e.value.issues if i.severity == "error"][0].message


def test_a_sliding_window_the_loaded_network_cannot_take_is_an_error_at_roi_size():
    from segflow.inference.predict import window_fits
    from segflow.networks.description import NetworkDescription
    from segflow.workflow.errors import ConfigValueError

    unet = NetworkDescription("UNet2D", 2, 1, 2, size_divisor=16)
    window_fits((64, 48), unet, explicit=True)
    window_fits(None, unet, explicit=False)
    with pytest.raises(ConfigValueError) as e:
        window_fits((64, 40), unet, explicit=True)
    assert e.value.field == "roi_size" and "divisible by 16, e.g. [64, 32]" in e.value.message
    unetr = NetworkDescription("UNETR", 3, 1, 2, size_divisor=16, fixed_size=(96, 96, 96))
    with pytest.raises(ConfigValueError) as e:
        window_fits((64, 64, 64), unetr, explicit=False)
    assert "takes exactly [96, 96, 96]" in e.value.message and "training patch size" in e.value.message


def test_a_predictor_window_is_checked_against_the_network_behind_its_checkpoint():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("evaluate_unet", "predictor", "roi_size", 44), file="e.json")
    [issue] = e.value.issues
    assert issue.path == "nodes[3].config.roi_size" and "UNet2D needs every input size divisible by 8" in issue.message
    with pytest.raises(WorkflowError) as e:  # through the Trainer too
        spec.loads(_mutated("train_evaluate_unet", "predictor", "roi_size", [44, 64]), file="t.json")
    assert "divisible by 8" in e.value.issues[0].message
    spec.loads(_mutated("evaluate_unet", "predictor", "roi_size", 40), file="e.json")


def test_a_nested_value_is_named_by_its_whole_path_with_its_reason():
    groups = [{"pattern": "encoder", "lr": 1e-3, "weight_decay": 5}]
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "optimizer", "param_groups", groups), file="q.json")
    [issue] = e.value.issues
    assert issue.path == "nodes[3].config.param_groups[0].weight_decay"
    assert issue.message == ("param_groups[0].weight_decay 5 is above 1.0: a decay this large shrinks the weights by "
                             "more than their size")


def test_a_dict_key_that_looks_like_a_type_name_stays_in_the_path():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("quickstart", "data_loader", "regions", {"Tumor": [0, 1]}), file="q.json")
    assert [i.path for i in e.value.issues] == ["nodes[0].config.regions.Tumor[0]"]


def test_an_export_size_is_checked_against_the_network_behind_the_trainer():
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("train_evaluate_unet", "export", "input_size", [64, 64, 64]), file="t.json")
    assert [(i.path, i.message) for i in e.value.issues] == [
        ("nodes[8].config.input_size", "input_size [64, 64, 64] has 3 sizes; the UNet2D is 2-D")]
    with pytest.raises(WorkflowError) as e:
        spec.loads(_mutated("train_evaluate_unet", "export", "input_size", [60, 64]), file="t.json")
    assert "divisible by 8" in e.value.issues[0].message
    spec.loads(_mutated("train_evaluate_unet", "export", "input_size", [64]), file="t.json")


def test_postprocessing_classes_are_classes_of_the_data():
    doc = json.loads((ROOT / "workflows" / "evaluate_unet.json").read_text())
    [predictor] = [n for n in doc["nodes"] if n["name"] == "predictor"]
    predictor.setdefault("config", {}).update(postprocessing="largest_component", postprocessing_classes=[1, 2])
    with pytest.raises(WorkflowError) as e:
        spec.loads(json.dumps(doc), file="e.json")
    [issue] = e.value.issues
    assert issue.path.endswith("postprocessing_classes") and "names class 2, but" in issue.message


def test_the_smallest_attention_unet_builds_and_runs():
    """base_channels 1 once validated and failed in training (its first attention gate had 0 channels)."""
    import torch

    from segflow.networks.factory import build_network
    from segflow.nodes.networks import AttentionUNetConfig

    with pytest.raises(Exception, match="greater than or equal to 2"):
        AttentionUNetConfig(base_channels=1)
    net = build_network("AttentionUNet", AttentionUNetConfig(base_channels=2, depth=3))
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


SCHEMA_FLAGS = [c for c in ONCE_ACCEPTED if INF not in json.dumps(c[3]) and c[2] != "monitor"]


@pytest.mark.parametrize("workflow,node,key,value,words", SCHEMA_FLAGS, ids=[f"{c[1]}.{c[2]}" for c in SCHEMA_FLAGS])
def test_the_json_schema_flags_the_same_values_an_editor_sees(workflow, node, key, value, words):
    """What an editor (or check-jsonschema in CI) checks against schemas/workflow.schema.json flags the
    values validate rejects by their range (infinity is JSON's 1e400, which schema validators read as
    a number; the monitor is a fact of the whole file)."""
    schema = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    doc = json.loads(_mutated(workflow, node, key, value))
    errors = list(validator.iter_errors(doc))
    assert errors, f"{node}.{key} = {value!r} passes the JSON Schema"
    original = json.loads((ROOT / "workflows" / f"{workflow}.json").read_text())
    assert list(validator.iter_errors(original)) == []


@pytest.mark.slow
def test_validated_edge_values_after_training_run_or_fail_located(tmp_path, monkeypatch):
    """The Predictor's, Evaluator's, overlay's and export's edge values in train_evaluate_unet."""
    monkeypatch.chdir(tmp_path)
    nodes = {"predictor": "Predictor", "evaluator": "Evaluator", "overlay": "SegmentationOverlay",
             "export": "ModelExport"}
    source = ROOT / "workflows" / "train_evaluate_unet.json"
    assert _run_edges(source, _edge_values(nodes), TINY, tmp_path) >= 10


def test_the_node_reference_shows_each_range():
    from segflow.workflow.catalogue import describe

    text = describe(node_types()["MedicalSegmentationLoader"])
    assert "batch_size: int (1 to 65,536) = 8" in text
    assert "seed: int (0 to 4,294,967,295) = 42" in text
    assert "image_size: int (8 to 4,096) | list[int (8 to 4,096)] | None = null" in text
    assert "FieldInfo" not in text and "Annotated" not in text
