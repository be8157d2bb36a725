"""The file format and wiring rules, on small node types defined here (not the registry)."""
import json

import pytest
from pydantic import Field

from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.workflow import jsonpos, spec
from segflow.workflow.errors import WorkflowError


class LoaderConfig(NodeConfig):
    data_dir: str = Field("data", description="where")
    batch_size: int = Field(8, gt=0, description="how many")
    shuffle: bool = Field(True, description="shuffle")
    aliases = {"shuffle_train": "shuffle"}


class Loader(Node):
    type = "Loader"
    Config = LoaderConfig
    outputs = (Port("train_loader", "DataLoader"), Port("val_loader", "DataLoader"), Port("dataset_info", "DatasetInfo"))


class NetConfig(NodeConfig):
    out_channels: int = Field(2, description="classes")
    aliases = {"num_classes": "out_channels"}


class Net(Node):
    type = "Net"
    Config = NetConfig
    inputs = (Port("dataset_info", "DatasetInfo", required=False),)
    outputs = (Port("model", "Model"),)

    @classmethod
    def check(cls, config, neighbours):
        if "dataset_info" in neighbours and config.out_channels > 10:
            return [Finding("out_channels", "too_many", "too many classes", severity="warning")]
        return []


class OptConfig(NodeConfig):
    learning_rate: float = Field(1e-4, description="lr")
    betas: tuple[float, float] = Field((0.9, 0.999), description="betas")
    aliases = {"lr": "learning_rate"}


class Opt(Node):
    type = "Opt"
    Config = OptConfig
    inputs = (Port("model", "Model"),)
    outputs = (Port("optimizer", "Optimizer"),)


class Ckpt(Node):
    type = "Ckpt"
    inputs = (Port("model", "Model"),)
    outputs = (Port("model", "Model", passes="model"),)


class Train(Node):
    type = "Train"
    inputs = (Port("model", "Model"), Port("train_loader", "DataLoader"),
              Port("val_loader", "DataLoader", required=False), Port("optimizer", "Optimizer"))
    outputs = (Port("model", "TrainedModel", passes="model"),)


class Pred(Node):
    type = "Pred"
    inputs = (Port("model", "TrainedModel", accepts=("Model",)), Port("loader", "DataLoader", prefer=("val_loader",)))
    outputs = (Port("predictions", "Predictions"),)


TYPES = {c.type: c for c in (Loader, Net, Opt, Ckpt, Train, Pred)}


def load(nodes, links=None, sets=(), **top):
    doc = {"workflow": "t", **top, "nodes": [{"type": t, "name": n, "config": c} for t, n, c in nodes]}
    if links is not None:
        doc["links"] = links
    return spec.loads(json.dumps(doc, indent=1), "t.json", sets=sets, types=TYPES)


def edges(wf):
    return {(w.source, w.source_port, w.target, w.target_port) for w in wf.wires}


def codes(exc):
    return [i.code for i in exc.value.issues]


def test_gui_strings_are_coerced_and_aliases_accepted():
    wf = load([("Loader", "data", {"batch_size": "4", "shuffle_train": "False"}),
               ("Net", "net", {"num_classes": "3"}),
               ("Opt", "opt", {"lr": "1e-3", "betas": "[0.8, 0.9]"})])
    assert wf.nodes["data"].config.batch_size == 4 and wf.nodes["data"].config.shuffle is False
    assert wf.nodes["net"].config.out_channels == 3
    assert wf.nodes["opt"].config.learning_rate == 1e-3 and wf.nodes["opt"].config.betas == (0.8, 0.9)


def test_top_level_name_alias_and_editor_keys():
    text = json.dumps({"name": "From GUI", "nodes": [
        {"type": "Net", "name": "net", "config": {}, "position": {"x": "10", "y": 20}, "collapsed": False},
        {"type": "Opt", "name": "opt", "position": [1, 2], "is_composite": "false"}]})
    wf = spec.loads(text, types=TYPES)
    assert wf.name == "From GUI"
    with pytest.raises(WorkflowError) as e:
        spec.loads(text.replace('"position": [1, 2]', '"position": [1]'), types=TYPES)
    assert codes(e) == ["bad_value"] and e.value.issues[0].path == "nodes[1].position"


def test_auto_wiring_prefers_passed_on_models_and_matching_port_names():
    wf = load([("Loader", "data", {}), ("Net", "net", {}), ("Ckpt", "ck", {}), ("Opt", "opt", {}),
               ("Train", "train", {}), ("Pred", "pred", {})])
    assert edges(wf) == {
        ("data", "dataset_info", "net", "dataset_info"),
        ("net", "model", "ck", "model"),
        ("ck", "model", "opt", "model"),  # the loaded weights, not the fresh network
        ("ck", "model", "train", "model"),
        ("data", "train_loader", "train", "train_loader"),
        ("data", "val_loader", "train", "val_loader"),
        ("opt", "optimizer", "train", "optimizer"),
        ("train", "model", "pred", "model"),  # TrainedModel preferred over Model
        ("data", "val_loader", "pred", "loader"),
    }
    assert wf.order() == ["data", "net", "ck", "opt", "train", "pred"]
    assert wf.order("opt") == ["data", "net", "ck", "opt"]


def test_predictor_falls_back_to_a_plain_model_and_optional_inputs_stay_unwired():
    wf = load([("Net", "net", {}), ("Pred", "pred", {}), ("Loader", "data", {})])
    assert ("net", "model", "pred", "model") in edges(wf)
    wf = load([("Net", "net", {})])
    assert wf.wires == []


def test_explicit_links_win_and_port_aliases_are_accepted():
    wf = load([("Loader", "data", {}), ("Net", "a", {}), ("Net", "b", {}), ("Opt", "opt", {}),
               ("Train", "train", {})],
              links=[{"source_node": "b", "source_port": "model", "target_node": "opt", "target_port": "model"},
                     {"source_node": "b", "source_port": "model", "target_node": "train", "target_port": "model"},
                     {"source_node": "data", "source_port": "test_loader", "target_node": "train",
                      "target_port": "dataloader"}])
    assert ("b", "model", "opt", "model") in edges(wf)
    assert ("data", "val_loader", "train", "train_loader") in edges(wf)
    assert [w.auto for w in wf.wires[:3]] == [False, False, False]


def test_a_trained_model_may_be_linked_where_a_model_is_taken():
    wf = load([("Loader", "data", {}), ("Net", "net", {}), ("Opt", "o1", {}), ("Train", "t1", {}),
               ("Opt", "o2", {}), ("Train", "t2", {})],
              links=[{"source_node": "net", "source_port": "model", "target_node": "o1", "target_port": "model"},
                     {"source_node": "net", "source_port": "model", "target_node": "t1", "target_port": "model"},
                     {"source_node": "o1", "source_port": "optimizer", "target_node": "t1", "target_port": "optimizer"},
                     {"source_node": "t1", "source_port": "model", "target_node": "o2", "target_port": "model"},
                     {"source_node": "t1", "source_port": "model", "target_node": "t2", "target_port": "model"},
                     {"source_node": "o2", "source_port": "optimizer", "target_node": "t2", "target_port": "optimizer"}])
    assert wf.order() == ["data", "net", "o1", "t1", "o2", "t2"]


def test_input_linked_twice():
    link = {"source_node": "net", "source_port": "model", "target_node": "opt", "target_port": "model"}
    with pytest.raises(WorkflowError) as e:
        load([("Net", "net", {}), ("Opt", "opt", {})], links=[link, link])
    assert codes(e) == ["input_linked_twice"] and e.value.issues[0].path == "links[1]"


def test_set_overrides_apply_before_validation_and_are_named_in_errors():
    wf = load([("Loader", "data", {"batch_size": 8})], sets=["data.batch_size=2", "data.data_dir=elsewhere"])
    assert wf.nodes["data"].config.batch_size == 2 and wf.nodes["data"].config.data_dir == "elsewhere"
    with pytest.raises(WorkflowError) as e:
        load([("Loader", "data", {})], sets=["data.batch_size=0"])
    assert e.value.issues[0].path == "nodes[0].config.batch_size (from --set)"
    with pytest.raises(WorkflowError) as e:
        load([("Loader", "data", {})], sets=["dat.batch_size=2"])
    assert codes(e) == ["unknown_node"] and "'data'" in e.value.issues[0].hint
    with pytest.raises(WorkflowError) as e:
        load([("Loader", "data", {})], sets=["batch_size=2"])
    assert codes(e) == ["bad_override"]


def test_duplicate_keys_in_json_are_errors_not_silently_dropped():
    text = '{"workflow": "t", "nodes": [{"type": "Net", "name": "n", "config": {"out_channels": 2, "out_channels": 3}}]}'
    with pytest.raises(WorkflowError) as e:
        spec.loads(text, types=TYPES)
    assert codes(e) == ["duplicate_key"]
    assert (e.value.issues[0].line, e.value.issues[0].column) == (1, text.rindex('"out_channels"') + 1)


def test_unknown_top_level_and_node_keys():
    text = json.dumps({"workflow": "t", "nodez": [], "nodes": [{"type": "Net", "name": "n", "cfg": {}}]})
    with pytest.raises(WorkflowError) as e:
        spec.loads(text, types=TYPES)
    assert [(i.code, i.path, i.hint) for i in e.value.issues] == [
        ("unknown_key", "nodez", "did you mean 'nodes'?"), ("unknown_key", "nodes[0].cfg", "did you mean 'config'?")]


def test_node_checks_become_located_warnings():
    wf = load([("Loader", "data", {}), ("Net", "net", {"out_channels": 11})])
    (w,) = wf.warnings
    assert (w.code, w.severity, w.path, w.node) == ("too_many", "warning", "nodes[1].config.out_channels", "net")
    assert w.line is not None


def test_resolved_workflow_has_defaults_and_every_link():
    wf = load([("Net", "net", {}), ("Opt", "opt", {"lr": "0.5"})])
    resolved = wf.resolved()
    assert resolved["seed"] == 0
    assert resolved["nodes"][1]["config"] == {"learning_rate": 0.5, "betas": [0.9, 0.999]}
    assert resolved["links"] == [{"source_node": "net", "source_port": "model", "target_node": "opt",
                                  "target_port": "model", "auto": True}]


def test_json_reader_positions_and_values_match_the_standard_library():
    text = '{\n  "a": [1, 2.5, {"b": "x\\u00e9\\n"}],\n  "c": true, "d": -1e-4, "e": null\n}'
    value, pos = jsonpos.loads(text)
    assert value == json.loads(text)
    assert pos.keys[("a",)] == (2, 3) and pos.values[("a", 2, "b")] == (2, 23) and pos.values[("d",)] == (3, 19)
    for bad, where in [('{"a": 1,\n "b" 2}', (2, 6)), ('[1, 2', (1, 6)), ('{"a": tru}', (1, 7)), ('{} x', (1, 4))]:
        with pytest.raises(jsonpos.JSONSyntaxError) as e:
            jsonpos.loads(bad)
        assert (e.value.line, e.value.column) == where


def test_bad_values_are_explained_with_the_fields_own_documentation():
    with pytest.raises(WorkflowError) as e:
        load([("Opt", "opt", {"betas": "[0.8]", "learning_rate": "fast"})])
    found = {i.path: i for i in e.value.issues}
    short = found["nodes[0].config.betas"]
    assert short.code == "bad_value" and "too few items: nothing at position 1" in short.message
    assert short.hint == "betas"  # the field's description
    assert found["nodes[0].config.learning_rate"].hint == "lr"
