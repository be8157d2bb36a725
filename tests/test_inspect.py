"""`segflow inspect`: a workflow's network built on the CPU, its module tree, parameter counts and named
parts, the Optimizer's freeze and param_groups applied; entries that take no parameter are located
errors, there and in `segflow run`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segflow.cli import main
from segflow.networks.factory import build_network
from segflow.networks.parts import part_of, parts_of
from segflow.nodes.networks import UNet2DConfig

UNET = {"base_channels": 4, "depth": 3}


def workflow(tmp_path: Path, freeze: list[str] | None = None, param_groups: list | None = None,
             extra_network: bool = False) -> Path:
    """A network and its Optimizer, written one key per line so that positions are easy to predict."""
    optimizer = {"learning_rate": 0.01, "freeze": freeze or [], "param_groups": param_groups or []}
    nodes = [{"type": "UNet2D", "name": "net", "config": UNET},
             {"type": "Optimizer", "name": "opt", "config": optimizer}]
    links = []
    if extra_network:
        nodes.append({"type": "SegResNet", "name": "other", "config": {"spatial_dims": 2}})
        links.append({"source_node": "net", "source_port": "model", "target_node": "opt", "target_port": "model"})
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"workflow": "inspect", "nodes": nodes, "links": links}, indent=1))
    return path


def reference() -> torch.nn.Module:
    return build_network("UNet2D", UNet2DConfig(**UNET))


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_tree_counts_parts_and_groups(tmp_path, capsys):
    wf = workflow(tmp_path, freeze=["encoder"], param_groups=[{"pattern": "head", "lr": 0.001, "name": "out"}])
    assert main(["inspect", str(wf), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    model = reference()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    parts = parts_of(model)
    per_part = {part: sum(s for n, s in sizes.items() if part_of(n, parts) == part) for part in parts}
    assert out.startswith(f"net: UNet2D, {sum(sizes.values()):,} parameters")
    head_row = next(line for line in out.splitlines() if line.strip().startswith("model.2 "))
    assert head_row.split()[1:] == ["Sequential", f"{per_part['head']:,}", "yes", "head"]
    encoder_row = next(line for line in out.splitlines() if line.strip().startswith("model.0 "))
    first = sum(s for n, s in sizes.items() if n.startswith("model.0."))
    assert encoder_row.split()[1:] == ["ResidualUnit", f"{first:,}", "no", "encoder"]
    mixed = next(line for line in out.splitlines() if line.strip().startswith("model.1 "))
    assert mixed.split()[-2:] == ["partly", "encoder+decoder"]
    # nothing deeper than --depth 2 in the tree
    tree = out.split("\n\n")[1].splitlines()[1:]
    assert all(row.split()[0].count(".") <= 1 for row in tree if not row.startswith("("))
    for part in parts:
        assert f"  {part:<7}  {per_part[part]:,} parameters: " in out
    assert f"Optimizer 'opt': {per_part['encoder']:,} parameters frozen" in out
    assert f"  out          pattern 'head', lr 0.001, weight_decay 0: {per_part['head']:,} parameters" in out
    assert f"  rest         pattern '*', lr 0.01, weight_decay 0: {per_part['decoder']:,} parameters" in out


def test_depth_zero_shows_every_module_with_parameters(tmp_path, capsys):
    assert main(["inspect", str(workflow(tmp_path)), "--depth", "0", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = reference()
    holding = {n for n, m in model.named_modules() if any(True for _ in m.parameters())}
    assert {r["name"] for r in report["modules"]} == holding
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["modules"][0] == {**report["modules"][0], "name": "", "kind": "UNet", "level": 0,
                                    "trainable": report["parameters"], "parts": ["encoder", "decoder", "head"]}
    assert sum(p["parameters"] for p in report["parts"].values()) == report["parameters"]
    assert report["parts"]["head"]["modules"] == ["model.2"] and "logits" in report["parts"]["head"]["doc"]
    assert [g["name"] for g in report["optimizers"][0]["groups"]] == ["all"]


def test_entries_that_take_no_parameter_are_located_errors(tmp_path, capsys):
    wf = workflow(tmp_path, freeze=["head", "encodr"], param_groups=[{"pattern": "model.9.*", "lr": 0.1}])
    assert main(["inspect", str(wf)]) == 1
    err = capsys.readouterr().err
    line = line_of(wf, '"encodr"')
    assert (f"{wf}:{line}:" in err and "error[unknown_parameter] node 'opt' at nodes[1].config.freeze[1]: 'encodr' is "
            "neither a named part of UNet2D nor matches a parameter of the model" in err)
    assert "hint: named parts: encoder, decoder, head; top-level modules are ['model']" in err
    assert f"{wf}:{line_of(wf, 'model.9.*')}:" in err and "nodes[1].config.param_groups[0].pattern: 'model.9.*'" in err


def test_run_reports_a_bad_freeze_entry_at_its_line(tmp_path, capsys):
    wf = workflow(tmp_path, freeze=["encodr"])
    assert main(["run", str(wf), "--run-dir", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"{wf}:{line_of(wf, 'encodr')}:" in err and "error[unknown_parameter] node 'opt' at " \
        "nodes[1].config.freeze[0]" in err
    assert "Traceback" not in err and "failed" not in err


def test_which_network(tmp_path, capsys):
    wf = workflow(tmp_path, extra_network=True)
    assert main(["inspect", str(wf)]) == 1
    assert "the workflow has 2 network nodes" in capsys.readouterr().err
    assert main(["inspect", str(wf), "--node", "other", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("other: SegResNet") and "No Optimizer in the workflow takes this network's" in out
    assert main(["inspect", str(wf), "--node", "opt"]) == 1
    assert "node 'opt' (Optimizer) is not a network" in capsys.readouterr().err
    assert main(["inspect", str(wf), "--node", "nett"]) == 1
    assert "did you mean 'net'?" in capsys.readouterr().err


@pytest.mark.parametrize("node_type,config", [("TransUNet", {"img_size": 32, "base_channels": 8, "hidden_size": 64,
                                                             "depth": 2, "num_heads": 4, "mlp_dim": 128})])
def test_a_part_wins_over_a_module_of_its_name(tmp_path, capsys, node_type, config):
    """TransUNet has a module called encoder (its CNN stages); the part `encoder` is the whole hybrid encoder."""
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"workflow": "t", "nodes": [
        {"type": node_type, "name": "net", "config": config},
        {"type": "Optimizer", "name": "opt", "config": {"freeze": ["encoder"]}}]}))
    assert main(["inspect", str(path), "--depth", "1", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    frozen = {r["name"] for r in report["modules"] if r["level"] == 1 and r["trainable"] == 0}
    assert frozen == {"encoder", "patch_embed", "pos_embed", "blocks", "norm"}
