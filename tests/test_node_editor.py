"""Files saved by the node editor the seed guide came from (tests/data/node_editor/README.md): its
example workflows validate and run; its node types, keys and ports are taken with their meaning;
its tensor-passing building blocks get a located error naming the segflow network to use."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import toy
from monai.networks.nets import UNETR, VNet
from PIL import Image

from segflow.cli import main
from segflow.inference.records import PredictionRecord, PredictionSet
from segflow.losses.segmentation import build_loss
from segflow.nodes import registry
from segflow.nodes.base import RunContext
from segflow.nodes.editor import BUILDING_BLOCKS
from segflow.nodes.losses import LossFunctionConfig
from segflow.nodes.training import Trainer
from segflow.workflow import spec
from segflow.workflow.errors import WorkflowError
from segflow.workflow.schema import render

EDITOR = Path(__file__).parent / "data" / "node_editor"
EXAMPLES = sorted(p.name for p in EDITOR.glob("*.json"))


def test_the_nine_examples_are_there():
    assert len(EXAMPLES) == 9


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_validates_and_meets_the_schema(name):
    wf = spec.load(EDITOR / name)
    assert {i.code for i in wf.warnings} <= {"editor_depth", "unused_value"}
    schema = jsonschema.Draft202012Validator(json.loads(render()))
    assert [e.message for e in schema.iter_errors(json.loads((EDITOR / name).read_text()))] == []


def test_testing_workflow_wires_the_editors_ports_to_one_prediction_set():
    wf = spec.load(EDITOR / "testing_workflow.json")
    assert {n: s.type for n, s in wf.nodes.items()} == {
        "data_loader": "MedicalSegmentationLoader", "unet_model": "UNet2D", "checkpoint_loader": "CheckpointLoader",
        "predictor": "Predictor", "metrics": "Evaluator", "visualization": "SegmentationOverlay",
        "print_results": "Print"}
    wires = {(w.source, w.source_port, w.target, w.target_port) for w in wf.wires if not w.auto}
    assert wires == {
        ("data_loader", "val_loader", "predictor", "loader"),  # test_loader -> dataloader
        ("unet_model", "model", "checkpoint_loader", "model"),
        ("checkpoint_loader", "model", "predictor", "model"),
        ("predictor", "predictions", "metrics", "predictions"),  # all_predictions and all_labels: one set
        ("metrics", "metrics", "print_results", "input"),
        ("predictor", "predictions", "visualization", "predictions"),  # all_images, all_labels, all_predictions
    }
    assert wf.nodes["metrics"].config.num_classes == 2
    assert (wf.nodes["visualization"].config.save_individual, wf.nodes["visualization"].config.save_grid) == (
        True, True)
    assert wf.nodes["print_results"].config.prefix == "Test Results"  # `message`
    assert wf.resolved()["nodes"][3]["type"] == "Predictor"


def test_class_names_with_node_suffix_are_the_types():
    wf = spec.load(EDITOR / "training_workflow_simple.json")
    assert [s.type for s in wf.nodes.values()] == ["MedicalSegmentationLoader", "UNet2D", "LossFunction"]
    aliases = registry.aliases()
    assert aliases["MetricsCalculator"] == "Evaluator" and aliases["BatchPredictor"] == "Predictor"
    assert aliases["AttentionUNet2D"] == "AttentionUNet" and aliases["TrainerNode"] == "Trainer"


def workflow(*nodes, links=()) -> str:
    return json.dumps({"workflow": "t", "nodes": [{"type": t, "name": n, "config": c} for t, n, c in nodes],
                       "links": [dict(zip(("source_node", "source_port", "target_node", "target_port"), link))
                                 for link in links]}, indent=1)


def issues(text: str):
    with pytest.raises(WorkflowError) as e:
        spec.loads(text, file="wf.json")
    return e.value.issues


LOADER = ("MedicalSegmentationLoader", "data", {"data_dir": "d"})
UNET = ("UNet2D", "model", {})


@pytest.mark.parametrize("block", sorted(BUILDING_BLOCKS))
def test_building_blocks_say_which_network_to_use(block):
    found = issues(workflow(LOADER, (block, "enc", {"in_channels": 1})))
    assert [(i.code, i.node, i.path) for i in found] == [("editor_building_block", "enc", "nodes[1].type")]
    assert "building block of the node editor" in found[0].message
    named = {"ResNetEncoder2D": "DeepLabV3Plus", "ResNetDecoder2D": "DeepLabV3Plus", "ResNetEncoder3D": "SegResNet",
             "TransformerEncoder": "UNETR", "VisionTransformer2D": "TransUNet"}[block]
    assert named in found[0].hint


@pytest.mark.parametrize("node,link,path,words", [
    (UNET, ("data", "train_loader", "model", "input"), "links[0].target_port", "link its 'model' output"),
    (UNET, ("model", "output", "p", "input"), "links[0].source_port", "Predictor"),
    (("Predictor", "predict", {}), ("data", "val_loader", "predict", "input"), "links[0].target_port", "'loader'"),
    (("Predictor", "predict", {}), ("predict", "probabilities", "p", "input"), "links[0].source_port",
     "save_probabilities"),
])
def test_tensor_ports_get_a_located_error(node, link, path, words):
    found = issues(workflow(LOADER, UNET if node is not UNET else ("UNet3D", "other", {}), node,
                            ("Print", "p", {}), links=[link]))
    tensor = [i for i in found if i.code == "tensor_port"]
    assert [(i.path, i.node) for i in tensor] == [(path, link[2] if path.endswith("target_port") else link[0])]
    assert "carried a tensor" in tensor[0].message and words in tensor[0].hint


def test_a_repeated_link_through_aliases_is_one_link_but_two_sources_are_still_an_error():
    predictor = ("Predictor", "predictor", {})
    evaluator = ("MetricsCalculator", "metrics", {})
    same = [("predictor", "all_predictions", "metrics", "predictions"), ("predictor", "all_labels", "metrics", "labels")]
    wf = spec.loads(workflow(LOADER, UNET, predictor, evaluator, links=same))
    assert [w for w in wf.wires if w.target == "metrics"] == [
        spec.Wire("predictor", "predictions", "metrics", "predictions", link_index=0)]
    twice = [("predictor", "predictions", "metrics", "predictions")] * 2
    assert [i.code for i in issues(workflow(LOADER, UNET, predictor, evaluator, links=twice))] == [
        "input_linked_twice"]
    two = [same[0], ("other", "predictions", "metrics", "labels")]
    found = issues(workflow(LOADER, UNET, predictor, ("Predictor", "other", {}), evaluator, links=two))
    assert [(i.code, i.path) for i in found] == [("input_linked_twice", "links[1]")]


TRAINER_NODES = (LOADER, UNET, ("LossFunction", "loss", {}), ("Optimizer", "opt", {"learning_rate": 0.01}))


def test_trainer_without_optimizer_or_loss_needs_their_keys():
    found = issues(workflow(LOADER, UNET, ("Trainer", "trainer", {})))
    assert sorted((i.code, i.path) for i in found) == [("missing_input", "nodes[2].name")] * 2
    hints = " ".join(i.hint for i in found)
    assert "set 'loss_type' on this node" in hints and "set 'learning_rate' on this node" in hints
    wf = spec.loads(workflow(LOADER, UNET, ("Trainer", "trainer", {"learning_rate": "0.001", "loss_type": "Dice"})))
    assert {w.target_port for w in wf.inputs_of("trainer")} == {"model", "train_loader", "val_loader"}
    assert (wf.nodes["trainer"].config.learning_rate, wf.nodes["trainer"].config.loss_type) == (0.001, "dice")
    assert wf.warnings == []


def test_trainer_warns_when_its_keys_and_a_wired_node_both_give_one():
    wf = spec.loads(workflow(*TRAINER_NODES, ("Trainer", "trainer", {"learning_rate": 0.001, "loss_type": "dice"})))
    assert sorted((i.code, i.path) for i in wf.warnings) == [
        ("unused_value", "nodes[4].config.learning_rate"), ("unused_value", "nodes[4].config.loss_type")]
    said = {i.path.rsplit(".", 1)[1]: i.message for i in wf.warnings}
    assert "the Optimizer node wired to this Trainer (its learning_rate is 0.01)" in said["learning_rate"]
    assert "the LossFunction node wired to this Trainer (its loss_type is 'combined')" in said["loss_type"]


def test_editor_keys_are_config_fields():
    wf = spec.loads(workflow(
        LOADER, ("UNet2DNode", "model", {"bilinear": "True", "depth": "4"}), ("UNETR", "unetr", {"num_layers": "8"}),
        ("VNet", "vnet", {"base_channels": "8", "spatial_dims": 2}), ("SegResNet", "seg", {"dimension": "2d"}),
        ("AttentionUNet2D", "att", {"depth": 4})))
    cfg = {n: s.config for n, s in wf.nodes.items()}
    assert cfg["model"].bilinear is True and cfg["model"].depth == 4
    assert cfg["unetr"].num_layers == 8 and cfg["vnet"].base_channels == 8 and cfg["seg"].spatial_dims == 2
    assert wf.nodes["att"].type == "AttentionUNet" and cfg["att"].spatial_dims == 2
    wf = spec.loads(workflow(
        LOADER, UNET, ("BatchPredictor", "pred", {"device": "cuda"}), ("MetricsCalculator", "m", {"num_classes": "2"}),
        ("SegmentationOverlay", "o", {"save_individual": "False", "save_grid": "True"}),
        ("ImageViewer", "v", {"show": "True", "save_path": "a/b.png"}), ("MetricsPlotter", "mp", {"show": "False"}),
        ("Print", "p", {"prefix": "hello"}), links=[("m", "metrics", "p", "input")]))
    cfg = {n: s.config for n, s in wf.nodes.items()}
    assert cfg["m"].num_classes == 2 and cfg["pred"].device == "cuda"
    assert (cfg["o"].save_individual, cfg["o"].save_grid) == (False, True)
    assert (cfg["v"].show, cfg["v"].save_path, cfg["mp"].show, cfg["p"].prefix) == (True, "a/b.png", False, "hello")
    assert [(w.source, w.source_port) for w in wf.inputs_of("mp")] == [("m", "metrics")]  # Metrics: no History here
    assert {w.target_port for w in wf.inputs_of("v")} == {"image", "segmentation"}
    found = issues(workflow(LOADER, UNET, ("Predictor", "pred", {}), ("Evaluator", "m", {"num_classes": 1})))
    assert [(i.code, i.path) for i in found] == [("bad_value", "nodes[3].config.num_classes")]
    found = issues(workflow(("Print", "p", {"prefix": "a", "message": "b"})))
    assert ("duplicate_key", "nodes[0].config.message") in [(i.code, i.path) for i in found]


def test_evaluator_task_type_classification_warns():
    wf = spec.loads(workflow(LOADER, UNET, ("BatchPredictor", "pred", {}),
                             ("MetricsCalculator", "m", {"task_type": "classification"})))
    assert [(i.code, i.path) for i in wf.warnings] == [("unused_value", "nodes[3].config.task_type")]


def test_editor_depth_warns_only_for_files_the_editor_saved():
    raw = json.loads(workflow(LOADER, ("UNet2D", "model", {"depth": 3})))
    assert spec.loads(json.dumps(raw)).warnings == []
    raw["nodes"][1]["is_composite"] = False
    found = spec.loads(json.dumps(raw)).warnings
    assert [(i.code, i.path) for i in found] == [("editor_depth", "nodes[1].config.depth")]
    assert "set depth to 4" in found[0].hint


def test_a_hint_never_suggests_the_key_it_refuses():
    assert spec.suggest("num_layers", ["num_layers", "num_classes"]) == "did you mean 'num_classes'?"
    found = issues(workflow(("UNETR", "m", {"num_layer": 6})))
    assert found[0].code == "unknown_key" and "'num_layers'" in found[0].hint
    # every alias of every node type names one of its fields (UNETR's num_layers once named none)
    for cls in registry.all_types().values():
        for alias, canonical in cls.Config.aliases.items():
            assert canonical in cls.Config.model_fields, (cls.type, alias, canonical)
            assert alias not in cls.Config.model_fields, (cls.type, alias)
        for alias, port in cls.port_aliases.items():
            assert cls.input(alias) is not None or cls.output(alias) is not None, (cls.type, alias, port)


def test_print_takes_any_output_but_only_by_link():
    found = issues(workflow(LOADER, ("Print", "p", {})))
    assert [(i.code, i.node) for i in found] == [("ambiguous_input", "p")]
    assert "data.train_loader, data.val_loader, data.dataset_info" in found[0].message


# --- what the editor's keys do ------------------------------------------------------------------

def build(type_name: str, **raw):
    cls = registry.resolve(type_name)
    torch.manual_seed(0)
    return cls("model", cls.Config(**raw), RunContext(run_dir=Path("."), workflow_name="t")).run()["model"]


def levels(model, shape) -> list[tuple[int, ...]]:
    """The spatial sizes the model's convolutions work at, largest first."""
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(tuple(o.shape[2:])))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    model(torch.randn(*shape))
    for h in hooks:
        h.remove()
    return sorted(seen, reverse=True)


@pytest.mark.parametrize("type_name", ["UNet2D", "AttentionUNet2D"])
def test_depth_sets_the_number_of_levels(type_name):
    for depth in (3, 4):
        model = build(type_name, depth=depth, base_channels=4)
        assert levels(model, (1, 1, 32, 32)) == [(32 // 2**k,) * 2 for k in range(depth)]


@pytest.mark.parametrize("dims", [2, 3])
def test_bilinear_upsamples_by_interpolation(dims):
    shape = (2, 1) + (16,) * dims
    plain = build("UNet2D" if dims == 2 else "UNet3D", base_channels=4, depth=3)
    smooth = build("UNet2D" if dims == 2 else "UNet3D", base_channels=4, depth=3, bilinear=True)
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    transposed = f"ConvTranspose{dims}d"
    assert transposed in kinds(plain) and "Upsample" not in kinds(plain)
    assert transposed not in kinds(smooth) and "Upsample" in kinds(smooth)
    assert {u.mode for u in smooth.modules() if isinstance(u, torch.nn.Upsample)} == {
        "bilinear" if dims == 2 else "trilinear"}
    assert levels(smooth, shape) == levels(plain, shape)  # the same levels, upsampled another way
    out = smooth(torch.randn(*shape))
    assert out.shape == (2, 2) + (16,) * dims
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in smooth.parameters())


def test_unetr_num_layers_sets_the_transformer_depth():
    small = dict(spatial_dims=2, img_size=32, hidden_size=32, mlp_dim=64, num_heads=4, feature_size=4)
    assert type(build("UNETR", **small)) is UNETR and len(build("UNETR", **small).vit.blocks) == 12
    model = build("UNETR", num_layers=4, **small)
    assert len(model.vit.blocks) == 4 and model.taps == (1, 2, 3)
    used = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: used.append(k)) for k, b in enumerate(model.vit.blocks)]
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32) and used == [0, 1, 2, 3]
    for h in hooks:
        h.remove()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "norm_cross_attn" not in n)


def test_vnet_base_channels_sets_its_width():
    assert type(build("VNet", spatial_dims=2)) is VNet
    model = build("VNet", spatial_dims=2, base_channels=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 8 and max(c.out_channels for c in convs) == 128  # 8 doubled 4 times
    default = sum(p.numel() for p in build("VNet", spatial_dims=2).parameters())
    assert sum(p.numel() for p in model.parameters()) < default / 3
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match=r"in_channels \(3\) must divide base_channels \(8\)"):
        registry.get("VNet").Config(in_channels=3, base_channels=8)


def test_bce_is_torchs_binary_cross_entropy_on_each_class():
    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    target = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    loss = build_loss(LossFunctionConfig(loss_type="BCE"))
    assert loss(logits, label).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item())
    softmax = build_loss(LossFunctionConfig(loss_type="cross_entropy"))
    assert softmax(logits, label).item() == pytest.approx(F.cross_entropy(logits, label[:, 0]).item())
    with pytest.raises(ValueError, match="cannot have sigmoid false"):
        LossFunctionConfig(loss_type="bce", sigmoid=False)


def test_trainer_builds_adam_and_its_loss_from_its_keys(tmp_path):
    torch.manual_seed(0)
    said = []
    ctx = RunContext(run_dir=tmp_path, workflow_name="t", device="cpu", progress=False, log=said.append)
    cfg = Trainer.Config(epochs=4, learning_rate=0.02, loss_type="cross_entropy")
    train, val = toy.loaders()
    out = Trainer("trainer", cfg, ctx).run(model=toy.tiny_net(), train_loader=train, val_loader=val)
    history = out["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_dice"] > 0.7
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["lr"] == 0.02 and "exp_avg" in saved["optimizer"]["state"][0]
    assert any("no Optimizer wired; Adam with learning_rate 0.02" in m for m in said)
    assert any("no LossFunction wired; loss_type cross_entropy" in m for m in said)

    # the editor's CheckpointLoader also said what it loaded: checkpoint_info
    loader = registry.get("CheckpointLoader")
    out = loader("ck", loader.Config(checkpoint_path=str(tmp_path / "checkpoints" / "last.pt")), ctx).run(
        model=toy.tiny_net())
    assert out["checkpoint_info"] == {"checkpoint_path": str(tmp_path / "checkpoints" / "last.pt"), "epoch": 4,
                                      "monitor": "val_dice", "best": max(r["val_dice"] for r in history),
                                      "best_epoch": max(history, key=lambda r: r["val_dice"])["epoch"]}


# --- the editor's evaluation and viewer nodes ---------------------------------------------------

def prediction_set(tmp: Path, n: int = 3):
    def png(name, arr):
        Image.fromarray(arr.astype(np.uint8)).save(tmp / name)
        return tmp / name

    records = []
    for i in range(n):
        gt = np.zeros((24, 24), np.uint8)
        gt[6:18, 6:18] = 1
        pred = np.roll(gt, i, axis=1)
        records.append(PredictionRecord(f"case{i}", png(f"p{i}.png", pred), (png(f"i{i}.png", gt * 150 + 50),),
                                        png(f"l{i}.png", gt)))
    return PredictionSet(records, num_classes=2, spatial_dims=2, class_names=("background", "organ"), output_dir=tmp)


def node(type_name: str, tmp_path, log=None, **raw):
    cls = registry.resolve(type_name)
    raw = {cls.Config.aliases.get(k, k): v for k, v in raw.items()}  # as the spec layer renames them
    return cls(type_name.lower(), cls.Config(**raw), RunContext(run_dir=tmp_path, workflow_name="t",
                                                                log=log or (lambda m: None)))


def test_metrics_calculator_checks_num_classes(tmp_path):
    pset = prediction_set(tmp_path)
    metrics = node("MetricsCalculator", tmp_path, num_classes=2, task_type="segmentation").run(predictions=pset)
    assert metrics["metrics"]["per_class"]["organ"]["dice"]["mean"] == pytest.approx((1 + 11 / 12 + 10 / 12) / 3)
    with pytest.raises(ValueError, match="num_classes is 3, but the predictions have 2 classes"):
        node("MetricsCalculator", tmp_path, num_classes=3).run(predictions=pset)


@pytest.mark.parametrize("individual,grid,names", [
    (True, True, ["case0.png", "case1.png", "case2.png", "grid.png"]),
    (False, True, ["grid.png"]), (True, False, ["case0.png", "case1.png", "case2.png"])])
def test_overlay_save_individual_and_save_grid(tmp_path, individual, grid, names):
    out = node("SegmentationOverlay", tmp_path, save_individual=individual, save_grid=grid, output_dir="ov").run(
        predictions=prediction_set(tmp_path))
    assert [p.name for p in out["images"]] == names
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == names
    wf = spec.loads(workflow(LOADER, UNET, ("Predictor", "pr", {}),
                             ("SegmentationOverlay", "o", {"save_individual": False, "save_grid": False})))
    assert [(i.code, i.path) for i in wf.warnings] == [("unused_value", "nodes[3].config.save_grid")]


def test_print_summarises_what_reaches_it(tmp_path):
    pset = prediction_set(tmp_path)
    metrics = node("Evaluator", tmp_path, metrics=["dice"]).run(predictions=pset)["metrics"]
    history = [{"epoch": 1, "train_loss": 0.9, "val_dice": 0.5}, {"epoch": 2, "train_loss": 0.5, "val_dice": 0.7},
               {"epoch": 3, "train_loss": 0.4, "val_dice": 0.6}]
    cases = {
        "metrics": (metrics, ["| organ | 0.9", "| **mean over classes** |"]),
        "history": (history, ["training history: 3 epoch(s)", "train_loss: 0.4", "best val_dice: 0.7 at epoch 2"]),
        "model": (build("UNet2D", base_channels=4, depth=3), ["model UNet (UNet2D, 2-D):", "trainable"]),
        "tensor": (torch.arange(6.0).reshape(2, 3), ["tensor of shape [2, 3], float32, on cpu", "range [0, 5]"]),
        "predictions": (pset, ["predictions of 3 case(s) (3 with ground truth), 2 classes, 2-D", "cases: case0, "]),
        "loader": (torch.utils.data.DataLoader(list(range(10)), batch_size=4), ["3 batch(es) of 4, 10 sample(s)"]),
        "none": (None, ["nothing"]),
        "number": (3, ["3"]),
    }
    for what, (value, expected) in cases.items():
        said = []
        node("Print", tmp_path, log=said.append, message=f"About {what}").run(input=value)
        assert said[0].startswith(f"About {what}:\n  "), said
        for words in expected:
            assert words in said[0], (what, said[0])


def test_metrics_plotter_draws_a_history_and_metrics(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 1 - 1 / (e + 1), "lr": 1e-3}
               for e in range(1, 5)]
    node("MetricsPlotter", tmp_path, save_path="curves/history.png").run(metrics=history)
    metrics = node("Evaluator", tmp_path).run(predictions=prediction_set(tmp_path))["metrics"]
    node("MetricsPlotter", tmp_path).run(metrics=metrics)
    for path in (tmp_path / "curves" / "history.png", tmp_path / "metricsplotter.png"):  # default: <node>.png
        with Image.open(path) as im:
            assert im.width > 300 and len(np.unique(np.asarray(im.convert("L")))) > 20  # a real picture
    with pytest.raises(ValueError, match="nothing to plot"):
        node("MetricsPlotter", tmp_path).run(metrics=[])


def test_image_viewer_draws_the_first_case_and_overlays_its_prediction(tmp_path):
    pset = prediction_set(tmp_path)
    node("ImageViewer", tmp_path, save_path="plain.png").run(image=pset)
    node("ImageViewer", tmp_path, save_path="overlay.png").run(image=pset, segmentation=pset)
    with Image.open(tmp_path / "plain.png") as a, Image.open(tmp_path / "overlay.png") as b:
        plain, overlay = np.asarray(a.convert("RGB")).astype(int), np.asarray(b.convert("RGB")).astype(int)
    grey = lambda arr: int(np.count_nonzero(np.ptp(arr, axis=-1) > 40))  # noqa: E731 - coloured pixels
    assert grey(plain) == 0 and grey(overlay) > 100  # the class colour over the square
    assert overlay.shape[1] > plain.shape[1]  # two panels


def test_show_on_a_headless_machine_says_so_and_saves(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    said = []
    node("ImageViewer", tmp_path, log=said.append, show=True).run(image=prediction_set(tmp_path))
    node("MetricsPlotter", tmp_path, log=said.append, show="True").run(metrics=[{"epoch": 1, "train_loss": 1.0}])
    assert (tmp_path / "imageviewer.png").is_file() and (tmp_path / "metricsplotter.png").is_file()
    refused = [m for m in said if "cannot show" in m]
    assert len(refused) == 2 and "no display" in refused[0] and str(tmp_path / "imageviewer.png") in refused[0]


# --- the editor's training and testing examples, end to end on phantom data ---------------------

def run_editor_example(tmp_path, name: str, *sets: str) -> Path:
    run_dir = tmp_path / name.removesuffix(".json")
    data = [f"data_loader.data_dir={tmp_path / 'phantom2d'}", "data_loader.synthetic=phantom2d",
            "data_loader.synthetic_cases=6", "data_loader.image_size=32", "unet_model.base_channels=4"]
    args = ["run", str(EDITOR / name), "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)]
    assert main(args + sum((["--set", s] for s in (*data, *sets)), [])) == 0
    return run_dir


def train_editor_example(tmp_path) -> Path:
    """The training example for one epoch; the checkpoint it writes."""
    train = run_editor_example(tmp_path, "training_workflow.json", "trainer.num_epochs=1")
    history = json.loads((train / "history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
    checkpoint = train / "examples" / "medical_segmentation_pipeline" / "checkpoints" / "best.pt"  # its checkpoint_dir
    assert checkpoint.is_file()
    return checkpoint


def test_training_then_testing_examples_run_on_phantom_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoint = train_editor_example(tmp_path)
    test = run_editor_example(tmp_path, "testing_workflow.json", f"checkpoint_loader.checkpoint_path={checkpoint}")
    cases = sorted(p.stem for p in (test / "predictions").glob("*.png"))
    assert len(cases) == 2  # the phantom's validation cases
    metrics = json.loads((test / "evaluation" / "metrics.json").read_text())
    assert metrics["num_evaluated"] == 2 and 0 <= metrics["mean"]["dice"] <= 1
    overlays = test / "examples" / "medical_segmentation_pipeline" / "visualization_output"
    assert sorted(p.stem for p in overlays.glob("*.png")) == sorted([*cases, "grid"])
    printed = capsys.readouterr().out
    assert "Test Results:\n  evaluation: mean ± std over cases (2 evaluated" in printed
