"""Experiment tracking beyond TensorBoard: one MLflow run per segflow run.

Where runs go follows MLflow's conventions: `MLFLOW_TRACKING_URI` when set, else a local SQLite
store (MLflow's default backend since the file store went into maintenance) beside the run
directories: `runs/mlflow.db`, artefacts in `runs/mlartifacts/`. The MLflow run id is kept in the
run directory (`mlflow.json`), so `--resume` goes on logging into the same MLflow run.

Logging happens at epoch ends (one batched call), never in the step. A tracking server that fails
costs one warning; from then on the run goes on without tracking and its own files are untouched.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from segflow.training.artefacts import epoch_scalars
from segflow.workflow.errors import first_line
from segflow.workflow.files import write_json
from segflow.workflow.rundir import RUNS_ROOT

RECORD = "mlflow.json"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value (characters)
BATCH = 100  # MLflow takes at most 100 params per log_batch call
# Without these, an unreachable server holds the run for minutes of retries before the warning.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def local_store(run_dir: Path) -> Path:
    """The folder holding the local store: runs/ for run directories under it, else the run directory's parent."""
    run_dir, root = Path(run_dir).resolve(), RUNS_ROOT.resolve()
    return root if run_dir.is_relative_to(root) else run_dir.parent


def flat_params(resolved: dict) -> dict[str, str]:
    """The resolved workflow as MLflow params: `node.key` -> value as JSON text, cut to MLflow's limit."""
    params = {"workflow": str(resolved.get("workflow", "")), "seed": str(resolved.get("seed", ""))}
    for node in resolved.get("nodes", []):
        params[f"{node['name']}.type"] = node["type"]
        for key, value in (node.get("config") or {}).items():
            text = value if isinstance(value, str) else json.dumps(value)
            params[f"{node['name']}.{key}"] = text[:MAX_PARAM_LENGTH]
    return params


class MlflowRun:
    """The MLflow side of one training run (rank 0 only). Every call is guarded: the first failure
    is said once and turns tracking off."""

    def __init__(self, run_dir: Path, experiment: str, workflow_file: Path | None, log: Callable[[str], None],
                 log_checkpoint: bool = False):
        self.run_dir, self.experiment, self.workflow_file = Path(run_dir), experiment, workflow_file
        self.log, self.log_checkpoint = log, log_checkpoint
        self.client = None
        self.run_id: str | None = None
        self.last_epoch = 0  # the last epoch logged: a rerun epoch after a crash is not logged twice
        self.failed = False

    # ---- guarded calls ----------------------------------------------------------------------

    def _guard(self, what: str, call: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - any tracking failure must leave the run going
            self.failed = True
            self.log(f"warning: MLflow tracking stopped ({what}: {first_line(e)}); "
                     f"the run goes on, and its files in {self.run_dir} are complete")
            return None

    def start(self, resuming: bool) -> None:
        self._guard("starting the MLflow run", lambda: self._start(resuming))

    def epoch(self, row: dict[str, Any]) -> None:
        if self.run_id is None or row["epoch"] <= self.last_epoch:
            return
        self._guard("logging metrics", lambda: self._log_epoch(row))

    def trained(self, files: list[Path], checkpoint: Path | None) -> None:
        """The training run's files, once at the end (the best checkpoint only when asked for: size)."""
        if self.run_id is None:
            return
        if self.log_checkpoint and checkpoint is not None:
            files = [*files, checkpoint]
        self._guard("logging files", lambda: self._log_files(files, None))

    def evaluation(self, metrics_json: Path) -> None:
        """An Evaluator's metrics.json, as an artefact and its mean values as metrics."""
        if self.run_id is None:
            return
        self._guard("logging evaluation", lambda: self._log_evaluation(Path(metrics_json)))

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, status))

    # ---- the MLflow calls -------------------------------------------------------------------

    def _start(self, resuming: bool) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        record = self.run_dir / RECORD
        earlier = json.loads(record.read_text()) if resuming and record.is_file() else None
        uri = earlier["tracking_uri"] if earlier else (mlflow.get_tracking_uri() if os.environ.get(
            "MLFLOW_TRACKING_URI") else f"sqlite:///{local_store(self.run_dir) / 'mlflow.db'}")
        self.client = MlflowClient(tracking_uri=uri)
        if earlier:
            self.run_id, self.last_epoch = earlier["run_id"], int(earlier.get("last_epoch", 0))
            self.client.update_run(self.run_id, status="RUNNING")
            self._log_params(resumed=True)
            self.log(f"MLflow: resuming run {self.run_id} in {uri} after epoch {self.last_epoch}")
            return
        run = self.client.create_run(self._experiment_id(uri), run_name=self.run_dir.name, tags=self._tags())
        self.run_id = run.info.run_id
        self._write_record(uri)
        self._log_params(resumed=False)
        self.log(f"MLflow: run {self.run_id} (experiment {self.experiment!r}) in {uri}")

    def _experiment_id(self, uri: str) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
            artifacts = (local_store(self.run_dir) / "mlartifacts").resolve().as_uri()  # not the cwd's ./mlruns
        return self.client.create_experiment(self.experiment, artifact_location=artifacts)

    def _tags(self) -> dict[str, str]:
        """Versions, device and git commit, from the run's environment.json (the executor's record)."""
        tags = {}
        env = self.run_dir / "environment.json"
        record = json.loads(env.read_text()) if env.is_file() else {}
        for name, version in (record.get("packages") or {}).items():
            tags[f"{name}.version"] = str(version)
        tags["device"] = str(record.get("device_override") or ("cuda" if record.get("cuda_available") else "cpu"))
        if record.get("git_revision"):
            tags["mlflow.source.git.commit"] = record["git_revision"]
        if self.workflow_file is not None:
            tags["mlflow.source.name"] = str(self.workflow_file)
        return tags

    def _log_params(self, resumed: bool) -> None:
        from mlflow.entities import Param

        resolved = self.run_dir / "workflow.resolved.json"
        if not resolved.is_file():
            return
        params = flat_params(json.loads(resolved.read_text()))
        if resumed:  # MLflow refuses to change a param: changed values become tags
            before = self.client.get_run(self.run_id).data.params
            for key, value in params.items():
                if key in before and before[key] != value:
                    self.client.set_tag(self.run_id, f"changed_on_resume.{key}", value)
            params = {k: v for k, v in params.items() if k not in before}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def _log_epoch(self, row: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, int(row["epoch"])) for k, v in epoch_scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.last_epoch = int(row["epoch"])
        self._write_record(None)

    def _log_files(self, files: list[Path], folder: str | None) -> None:
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def _log_evaluation(self, metrics_json: Path) -> None:
        self._log_files([metrics_json], "evaluation")
        result = json.loads(metrics_json.read_text())
        values = {f"eval/{k}": v for k, v in (result.get("mean") or {}).items()}
        for name, per_metric in (result.get("per_class") or {}).items():
            values.update({f"eval/{m}_{name}": (s or {}).get("mean") for m, s in per_metric.items()
                           if isinstance(s, dict)})
        values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
        if values:
            import time

            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            metrics = [Metric(k, v, stamp, self.last_epoch) for k, v in values.items()]
            self.client.log_batch(self.run_id, metrics=metrics)

    def _write_record(self, uri: str | None) -> None:
        record = self.run_dir / RECORD
        data = json.loads(record.read_text()) if record.is_file() else {}
        data.update({"run_id": self.run_id, "last_epoch": self.last_epoch}, **({"tracking_uri": uri} if uri else {}))
        write_json(record, data)
