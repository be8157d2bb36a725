"""Trainer tracking "mlflow": a real run read back through MlflowClient from the local SQLite store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
executor = pytest.importorskip("segflow.workflow.executor")

from mlflow.tracking import MlflowClient  # noqa: E402

from segflow.nodes.training import Trainer, TrainerConfig  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data_loader.image_size=32", "data_loader.synthetic_cases=12", "model.base_channels=8",
         "trainer.tracking=mlflow"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and the phantom data under the test's folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run(workflow: str, sets: list[str], **kw):
    lines: list[str] = []
    result = executor.run_workflow(ROOT / "workflows" / workflow, device="cpu", progress=False, log=lines.append,
                                   sets=SMALL + sets, **kw)
    return result, lines


def client_and_run(run_dir: Path):
    record = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    return client, client.get_run(record["run_id"])


def test_a_run_is_logged_with_params_metrics_and_files(in_tmp):
    result, lines = run("train_evaluate_unet.json", ["trainer.epochs=2", "evaluator.metrics=dice",
                                                            "predictor.tta=false"], until="evaluator")
    run_dir = result.run_dir
    client, logged = client_and_run(run_dir)
    assert (in_tmp / "runs" / "mlflow.db").is_file()
    assert logged.info.run_name == run_dir.name and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "train_evaluate_unet"
    params = logged.data.params
    assert params["trainer.epochs"] == "2" and params["model.type"] == "UNet2D"
    assert json.loads(params["evaluator.metrics"]) == ["dice"]
    assert [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, "train/loss")] == \
        [(r["epoch"], pytest.approx(r["train_loss"])) for r in json.loads((run_dir / "history.json").read_text())]
    assert {"val/dice", "train/lr", "eval/dice"} <= set(logged.data.metrics)
    assert logged.data.tags["torch.version"] and logged.data.tags["device"] == "cpu"
    files = {f.path for f in client.list_artifacts(logged.info.run_id)}
    assert {"history.csv", "metrics.json", "loss.png", "train_evaluate_unet.json", "evaluation"} <= files
    assert not any(f.endswith(".pt") for f in files)  # checkpoints only when asked for
    assert (in_tmp / "runs" / "mlartifacts").is_dir() and not (in_tmp / "mlruns").exists()
    assert any(line.startswith("MLflow: run ") for line in lines)


def test_resume_goes_on_in_the_same_mlflow_run(in_tmp):
    first, _ = run("quickstart.json", ["trainer.epochs=2"])
    second, lines = run("quickstart.json", ["trainer.epochs=3"], resume=str(first.run_dir))
    assert Path(second.run_dir).resolve() == Path(first.run_dir).resolve()
    client, logged = client_and_run(first.run_dir)
    assert len(client.search_runs([logged.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")] == [1, 2, 3]
    assert logged.data.params["trainer.epochs"] == "2"  # MLflow keeps a param; the change is a tag
    assert logged.data.tags["changed_on_resume.trainer.epochs"] == "3"
    assert any("MLflow: resuming run" in line for line in lines)


def test_an_unreachable_server_warns_once_and_the_run_completes(in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result, lines = run("quickstart.json", ["trainer.epochs=2"])
    warnings = [line for line in lines if "MLflow tracking stopped" in line]
    assert len(warnings) == 1 and "the run goes on" in warnings[0]
    for name in ("history.csv", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (result.run_dir / name).is_file(), name


def test_validate_names_the_extra_when_mlflow_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    findings = Trainer.check(TrainerConfig(tracking="mlflow"), {})
    assert [(f.field, f.code) for f in findings] == [("tracking", "missing_package")]
    assert "segflow[mlflow]" in findings[0].hint
    assert Trainer.check(TrainerConfig(tracking=["tensorboard"]), {}) == []


def test_tracking_spellings_and_none():
    assert TrainerConfig(tracking="TensorBoard, MLflow").tracking == ["tensorboard", "mlflow"]
    assert TrainerConfig().tracking == ["tensorboard"]
    findings = Trainer.check(TrainerConfig(tracking=["none", "mlflow"]), {})
    assert [(f.field, f.code) for f in findings] == [("tracking", "bad_value")]
