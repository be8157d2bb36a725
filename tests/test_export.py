"""ModelExport: ONNX, torch.export and TorchScript parity for UNet2D, sample shapes, failures that say why."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from segflow.data.info import DatasetInfo
from segflow.export.formats import export_model
from segflow.networks.description import description_of
from segflow.networks.factory import build_network
from segflow.nodes.base import RunContext
from segflow.nodes.export import ModelExport, ModelExportConfig, sample_shape
from segflow.nodes.networks import UNet2DConfig
from segflow.workflow.errors import ConfigValueError


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_network("UNet2D", UNet2DConfig(in_channels=1, out_channels=2, base_channels=4, depth=3))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_parity_and_the_file_runs_on_another_batch_size(unet, tmp_path):
    lines = []
    report = export_model(unet, "torchscript", tmp_path / "m.pt", (1, 32, 32), log=lines.append)
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] <= 1e-4
    assert "max abs diff" in lines[-1]
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), unet.eval()(x), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left


def test_an_older_opset_is_the_one_written(unet, tmp_path, capfd):
    """Below 18 the torch.export-based exporter converts down; where its converter cannot (opset 13:
    no adapter for Identity) it kept 18 and logged a traceback. The file must hold the opset asked for."""
    import onnx

    lines = []
    for opset in (13, 17):
        report = export_model(unet, "onnx", tmp_path / f"m{opset}.onnx", (1, 32, 32), opset=opset, log=lines.append)
        model = onnx.load(str(tmp_path / f"m{opset}.onnx"))
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
        assert report["max_abs_diff"] <= 1e-4
    assert "Traceback" not in capfd.readouterr().err


def test_onnx_parity_with_dynamic_batch(unet, tmp_path):
    import onnx

    report = export_model(unet, "onnx", tmp_path / "m.onnx", (1, 32, 32), opset=18, log=lambda s: None)
    assert report["max_abs_diff"] <= 1e-4 and report["runtime"]
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a named, free batch axis


def test_torch_export_program_runs_any_batch_and_keeps_the_weights(unet, tmp_path):
    lines = []
    report = export_model(unet, "torch_export", tmp_path / "m.pt2", (1, 32, 32), log=lines.append)
    assert report["exporter"] == "torch.export" and report["max_abs_diff"] <= 1e-4
    assert "parity on [3, 1, 32, 32]" in lines[-1]
    program = torch.export.load(str(tmp_path / "m.pt2"))
    for batch in (1, 5):  # the batch axis is free: traced on 2, checked on 3, run here on 1 and 5
        x = torch.randn(batch, 1, 32, 32)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), unet.eval()(x), atol=1e-4)
    first = next(unet.parameters())
    assert any(torch.equal(v, first) for v in program.state_dict.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_fixed_batch_export_refuses_another_batch(unet, tmp_path):
    export_model(unet, "torch_export", tmp_path / "m.pt2", (1, 32, 32), dynamic_batch=False, log=lambda s: None)
    with pytest.raises(AssertionError, match=r"Guard failed: x.size\(\)\[0\] == 1"):
        torch.export.load(str(tmp_path / "m.pt2")).module()(torch.randn(2, 1, 32, 32))


def test_parity_failure_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    class Noisy(torch.nn.Module):  # traces a fixed random draw: the export differs from eager runs
        def forward(self, x):
            return x + torch.rand(1)

    target = tmp_path / "m.pt"
    target.write_bytes(b"previous export")
    with pytest.raises(ValueError, match=r"parity check failed for Noisy as torchscript.*tolerance 1e-06"):
        export_model(Noisy(), "torchscript", target, (1, 8, 8), tolerance=1e-6, log=lambda s: None)
    assert target.read_bytes() == b"previous export"


def test_unexportable_network_names_network_and_format(tmp_path):
    class Eig(torch.nn.Module):  # eigh has no ONNX operator in either exporter
        def forward(self, x):
            m = x.flatten(2) @ x.flatten(2).transpose(1, 2)
            return torch.linalg.eigh(m)[0].sum() + x

    with pytest.raises(ValueError, match=r"the network Eig cannot be exported to onnx: .*linalg_eigh") as err:
        export_model(Eig(), "onnx", tmp_path / "m.onnx", (1, 4, 4), log=lambda s: None)
    assert "\x1b[" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_sample_shape_from_config_dataset_info_or_meta(unet):
    meta = description_of(unet)
    assert sample_shape(ModelExportConfig(input_size="[64, 48]"), meta) == (1, 64, 48)
    assert sample_shape(ModelExportConfig(input_size=64), meta) == (1, 64, 64)
    info = DatasetInfo(in_channels=1, num_classes=2, spatial_dims=2, spacing=None, patch_size=(96, 80))
    assert sample_shape(ModelExportConfig(), meta, info) == (1, 96, 80)
    with pytest.raises(ValueError, match=r"input_size \[30, 30\].*divisible by 4"):
        sample_shape(ModelExportConfig(input_size=[30, 30]), meta)
    with pytest.raises(ValueError, match="set input_size"):
        sample_shape(ModelExportConfig(), meta)
    with pytest.raises(ValueError, match="2-D"):
        sample_shape(ModelExportConfig(input_size=[32, 32, 32]), meta)


def test_config_spellings_and_defaults():
    cfg = ModelExportConfig()
    assert cfg.format == "onnx" and cfg.dynamic_batch and cfg.parity_check and cfg.tolerance == 1e-4
    cfg = ModelExportConfig(format="TorchScript", tolerance="1e-3", dynamic_batch="false", opset="17")
    assert cfg.format == "torchscript" and cfg.tolerance == 1e-3 and cfg.dynamic_batch is False and cfg.opset == 17
    assert ModelExportConfig(format="jit").format == "torchscript"
    assert ModelExportConfig(format="PT2").format == ModelExportConfig(format="torch-export").format == "torch_export"
    with pytest.raises(ValueError):
        ModelExportConfig(format="tensorrt")
    with pytest.raises(ValueError):
        ModelExportConfig(input_size=[0, 32])


def test_node_writes_inside_the_run_dir(unet, tmp_path):
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=lambda s: None)
    node = ModelExport("export", ModelExportConfig(format="torchscript", input_size=[32, 32]), ctx)
    out = node.run(model=unet)
    assert out["file"] == tmp_path / "run" / "export" / "model.pt" and out["file"].exists()
    assert ctx.extras["exports"][0]["max_abs_diff"] <= 1e-4
    assert np.isfinite(ctx.extras["exports"][0]["max_abs_diff"])


def _export_node(tmp_path, **config):
    ctx = RunContext(run_dir=tmp_path / "run", workflow_name="t", log=lambda s: None)
    return ModelExport("export", ModelExportConfig(format="torchscript", input_size=[32, 32], **config), ctx)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_users_file_outside_the_run_dir_is_refused_before_and_while_running(unet, tmp_path):
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"a user's file")
    config = ModelExportConfig(format="torchscript", output_path=str(mine))
    [finding] = ModelExport.preflight(config, None)
    assert (finding.field, finding.code) == ("output_path", "output_exists")
    assert "overwrite: true" in finding.hint
    with pytest.raises(ConfigValueError, match=r"export.output_path: output_path .*mine.pt already exists") as err:
        _export_node(tmp_path, output_path=str(mine)).run(model=unet)
    assert err.value.code == "output_exists"
    assert mine.read_bytes() == b"a user's file"
    assert ModelExport.preflight(ModelExportConfig(output_path=str(mine), overwrite=True), None) == []
    assert _export_node(tmp_path, output_path=str(mine), overwrite=True).run(model=unet)["file"] == mine
    assert torch.jit.load(str(mine))  # replaced by the export, as asked


def test_a_folder_fifo_device_or_link_to_one_is_never_replaced(unet, tmp_path):
    folder, fifo, link = tmp_path / "dir.pt", tmp_path / "fifo.pt", tmp_path / "link.pt"
    folder.mkdir()
    os.mkfifo(fifo)
    link.symlink_to(folder)
    for path, kind in ((folder, "a folder"), (fifo, "a fifo"), (link, "a link to a folder"), ("/dev/null", "a device")):
        config = ModelExportConfig(output_path=str(path), overwrite=True)
        [finding] = ModelExport.preflight(config, None)
        assert finding.code == "output_not_file" and f"is {kind}" in finding.message, path
    with pytest.raises(ConfigValueError, match="is a fifo"):
        _export_node(tmp_path, output_path=str(fifo), overwrite=True).run(model=unet)
    assert folder.is_dir() and link.is_symlink() and fifo.is_fifo()


def test_the_runs_own_export_is_replaced_and_a_file_beside_it_is_kept(unet, tmp_path):
    (tmp_path / "run" / "export").mkdir(parents=True)
    old = tmp_path / "run" / "export" / "model.pt"
    old.write_bytes(b"an earlier attempt of this run")
    beside = tmp_path / "run" / "export" / "model.pt.partial"  # the name the export once used for its temporary file
    beside.write_bytes(b"kept")
    assert _export_node(tmp_path).run(model=unet)["file"] == old
    assert old.read_bytes() != b"an earlier attempt of this run" and beside.read_bytes() == b"kept"
    # absolute, into the run directory: its own, too; before the run is settled, preflight leaves it to run
    (tmp_path / "run" / "workflow.resolved.json").write_text("{}")
    assert ModelExport.preflight(ModelExportConfig(output_path=str(old)), None) == []
    assert _export_node(tmp_path, output_path=str(old)).run(model=unet)["file"] == old
    # a relative path that climbs out of the run directory is outside it
    (tmp_path / "elsewhere.pt").write_bytes(b"a user's file")
    with pytest.raises(ConfigValueError, match="already exists"):
        _export_node(tmp_path, output_path="../elsewhere.pt").run(model=unet)


def test_run_stops_before_any_node_when_the_export_would_replace_a_file(tmp_path, monkeypatch):
    import json

    from segflow.workflow.errors import WorkflowError
    from segflow.workflow.executor import run_workflow

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"a user's file")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"workflow": "wf", "nodes": [
        {"type": "UNet2D", "name": "model", "config": {"base_channels": 4, "depth": 2}},
        {"type": "ModelExport", "name": "export", "config": {"output_path": str(mine), "input_size": [16, 16]}}]}))
    with pytest.raises(WorkflowError) as err:
        run_workflow(wf, log=lambda s: None)
    [issue] = err.value.issues
    assert issue.code == "output_exists" and issue.path == "nodes[1].config.output_path"
    assert not (tmp_path / "runs").exists() and mine.read_bytes() == b"a user's file"
