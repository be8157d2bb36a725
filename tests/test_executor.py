"""The executor on small node types defined here: order, hand-over, errors, run directory, resume."""
import json
import os

import pytest
from pydantic import Field

from segflow.nodes import registry
from segflow.nodes.base import Finding, Node, NodeConfig, Port
from segflow.workflow import executor, rundir
from segflow.workflow.errors import NodeRunError, WorkflowError


class SourceConfig(NodeConfig):
    value: int = Field(1, description="the number to emit")
    path: str = Field("", description="a file that must exist, if set")


class Source(Node):
    type = "Source"
    Config = SourceConfig
    outputs = (Port("number", "Number"),)
    runs = 0

    def run(self):
        Source.runs += 1
        return {"number": self.config.value}

    @classmethod
    def preflight(cls, config, device):
        if config.path and not os.path.exists(config.path):
            return [Finding("path", "path_not_found", f"{config.path} does not exist")]
        return []


class Double(Node):
    type = "Double"
    inputs = (Port("number", "Number"),)
    outputs = (Port("number", "Doubled"),)

    def run(self, number):
        self.seen = getattr(self, "seen", []) + [number]  # per-instance: must not leak between runs
        return {"number": 2 * number + len(self.seen) - 1}


class Fail(Node):
    type = "Fail"
    inputs = (Port("number", "Doubled"),)
    outputs = (Port("out", "Nothing"),)

    def run(self, number):
        raise ZeroDivisionError(f"cannot divide {number}")


class CheckpointConfig(NodeConfig):
    fail: bool = Field(False, description="fail after writing the checkpoint")


class Checkpoint(Node):
    """What a Trainer does for `latest`: writes a checkpoint, marks the run usable, goes on (or fails)."""

    type = "Checkpoint"
    Config = CheckpointConfig
    inputs = (Port("number", "Number"),)
    run_dirs: list = []

    def run(self, number):
        Checkpoint.run_dirs.append(self.ctx.run_dir)
        latest = self.ctx.run_dir.parent / "latest"
        assert latest.resolve() != self.ctx.run_dir.resolve()  # not when the run started
        (self.ctx.run_dir / "checkpoints").mkdir()
        (self.ctx.run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
        self.ctx.mark_usable()
        if self.config.fail:
            raise RuntimeError("later failure")
        return {}


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "all_types", lambda: {c.type: c for c in (Source, Double, Fail, Checkpoint)})
    monkeypatch.chdir(tmp_path)


def write(tmp_path, nodes, name="wf"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"workflow": name, "nodes": [{"type": t, "name": n, "config": c} for t, n, c in nodes]}))
    return path


def test_nodes_run_in_order_and_outputs_are_handed_along(tmp_path):
    wf = write(tmp_path, [("Double", "double", {}), ("Source", "src", {"value": 5})])
    logs = []
    result = executor.run_workflow(wf, log=logs.append)
    assert result.outputs == {"src": {"number": 5}, "double": {"number": 10}}
    assert result.run_dir.parent.resolve() == (tmp_path / "runs" / "wf").resolve()
    assert (tmp_path / "runs" / "wf" / "latest").resolve() == result.run_dir.resolve()
    assert [line for line in logs if line.startswith("[")][0] == "[1/2] src (Source)"
    resolved = json.loads((result.run_dir / "workflow.resolved.json").read_text())
    assert resolved["nodes"][1]["config"] == {"value": 5, "path": ""}
    env = json.loads((result.run_dir / "environment.json").read_text())
    assert env["packages"]["torch"] and "cuda_available" in env
    assert set(json.loads((result.run_dir / "timings.json").read_text())) == {"src", "double"}


def test_no_state_leaks_between_two_runs(tmp_path):
    wf = write(tmp_path, [("Source", "src", {"value": 3}), ("Double", "double", {})])
    first = executor.run_workflow(wf, log=lambda s: None)
    second = executor.run_workflow(wf, log=lambda s: None)
    assert first.outputs == second.outputs == {"src": {"number": 3}, "double": {"number": 6}}
    assert first.run_dir != second.run_dir
    assert (tmp_path / "runs" / "wf" / "latest").resolve() == second.run_dir.resolve()


def test_latest_moves_to_a_run_once_it_has_something_to_load(tmp_path):
    latest = tmp_path / "runs" / "wf" / "latest"
    good = executor.run_workflow(write(tmp_path, [("Source", "src", {})]), log=lambda s: None)
    assert latest.resolve() == good.run_dir.resolve()  # no Trainer: usable once it has run
    failing = write(tmp_path, [("Source", "src", {}), ("Double", "double", {}), ("Fail", "boom", {})])
    with pytest.raises(NodeRunError):
        executor.run_workflow(failing, log=lambda s: None)
    assert latest.resolve() == good.run_dir.resolve()  # failed before any checkpoint: the good run stays
    Checkpoint.run_dirs = []
    with pytest.raises(NodeRunError, match="later failure"):
        executor.run_workflow(write(tmp_path, [("Source", "src", {}), ("Checkpoint", "trainer", {"fail": True})]),
                              log=lambda s: None)
    assert latest.resolve() == Checkpoint.run_dirs[0].resolve() != good.run_dir.resolve()  # since its checkpoint
    second = executor.run_workflow(write(tmp_path, [("Source", "src", {}), ("Checkpoint", "trainer", {})]),
                                   log=lambda s: None)
    assert latest.resolve() == second.run_dir.resolve()
    # a --run-dir of one's own is not under runs/<workflow>/: latest stays where it was
    executor.run_workflow(write(tmp_path, [("Source", "src", {})]), run_dir=tmp_path / "mine", log=lambda s: None)
    assert latest.resolve() == second.run_dir.resolve()


def test_a_failing_node_is_named_and_its_cause_chained(tmp_path):
    wf = write(tmp_path, [("Source", "src", {}), ("Double", "double", {}), ("Fail", "boom", {})])
    with pytest.raises(NodeRunError) as e:
        executor.run_workflow(wf, log=lambda s: None)
    assert str(e.value) == "node 'boom' (Fail) failed: cannot divide 2"
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_until_runs_only_the_ancestors(tmp_path):
    wf = write(tmp_path, [("Source", "src", {}), ("Double", "double", {}), ("Fail", "boom", {})])
    result = executor.run_workflow(wf, until="double", log=lambda s: None)
    assert set(result.outputs) == {"src", "double"}
    with pytest.raises(WorkflowError) as e:
        executor.run_workflow(wf, until="dubble", log=lambda s: None)
    assert e.value.issues[0].code == "unknown_node" and "'double'" in e.value.issues[0].hint


def test_paths_are_checked_before_any_node_runs(tmp_path):
    Source.runs = 0
    wf = write(tmp_path, [("Source", "a", {}), ("Source", "b", {"path": "missing/file.nii.gz"})])
    with pytest.raises(WorkflowError) as e:
        executor.run_workflow(wf, log=lambda s: None)
    issue = e.value.issues[0]
    assert (issue.code, issue.node, issue.path) == ("path_not_found", "b", "nodes[1].config.path")
    assert issue.line == 1 and Source.runs == 0


def test_resume_auto_finds_the_latest_checkpoint_and_reuses_its_run_dir(tmp_path):
    wf = write(tmp_path, [("Source", "src", {})])
    logs = []
    fresh = executor.run_workflow(wf, resume="auto", log=logs.append)
    assert any("starting fresh" in line for line in logs)
    ckpt = fresh.run_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert rundir.find_latest_checkpoint("wf").resolve() == ckpt.resolve()
    again = executor.run_workflow(wf, resume="auto", log=lambda s: None)
    assert again.run_dir.resolve() == fresh.run_dir.resolve()
    with pytest.raises(WorkflowError) as e:
        executor.run_workflow(wf, resume="nope.pt", log=lambda s: None)
    assert e.value.issues[0].code == "checkpoint_not_found"


def _checkpoint_in(run_dir):
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"x")
    return ckpt


def test_a_fresh_run_refuses_a_run_dir_that_holds_a_run_and_overwrite_moves_it_aside(tmp_path):
    wf = write(tmp_path, [("Source", "src", {})])
    first = executor.run_workflow(wf, run_dir="out", log=lambda s: None)
    old = _checkpoint_in(first.run_dir)
    with pytest.raises(WorkflowError) as e:
        executor.run_workflow(wf, run_dir="out", log=lambda s: None)
    [issue] = e.value.issues
    assert (issue.code, issue.path) == ("run_dir_not_empty", "--run-dir") and "--overwrite" in issue.hint
    assert old.read_bytes() == b"x"  # nothing of the earlier run was touched
    logs = []
    executor.run_workflow(wf, run_dir="out", overwrite=True, log=logs.append)
    [aside] = tmp_path.glob("out.replaced-*")
    assert (aside / "checkpoints" / "last.pt").read_bytes() == b"x" and not old.exists()
    assert any(aside.name in line for line in logs)


def test_a_run_dir_that_is_a_file_or_cannot_be_made_is_a_located_error(tmp_path):
    wf = write(tmp_path, [("Source", "src", {})])
    (tmp_path / "taken").write_text("a file")
    for where, words in (("taken", "is a file, not a folder"), ("taken/inside", "cannot be made")):
        with pytest.raises(WorkflowError) as e:
            executor.run_workflow(wf, run_dir=where, log=lambda s: None)
        [issue] = e.value.issues
        assert (issue.code, issue.path) == ("bad_run_dir", "--run-dir") and words in issue.message
    assert (tmp_path / "taken").read_text() == "a file"


def test_resume_auto_with_a_run_dir_resumes_that_run_and_not_the_workflows_newest(tmp_path):
    wf = write(tmp_path, [("Source", "src", {})])
    mine = executor.run_workflow(wf, run_dir="mine", log=lambda s: None)
    own = _checkpoint_in(mine.run_dir)
    newer = _checkpoint_in(executor.run_workflow(wf, log=lambda s: None).run_dir)
    os.utime(own, (1, 1))
    assert rundir.find_latest_checkpoint("wf") == newer
    assert rundir.resolve_resume("auto", "wf", print, run_dir=mine.run_dir) == own
    again = executor.run_workflow(wf, run_dir="mine", resume="auto", log=lambda s: None)
    assert again.run_dir == mine.run_dir
    assert rundir.resolve_resume(str(mine.run_dir), "wf", print) == own  # a run directory names its last.pt


def test_each_attempt_keeps_its_environment_record(tmp_path):
    wf = write(tmp_path, [("Source", "src", {})])
    first = executor.run_workflow(wf, log=lambda s: None)
    ckpt = _checkpoint_in(first.run_dir)
    executor.run_workflow(wf, resume=str(ckpt), log=lambda s: None)
    executor.run_workflow(wf, resume="auto", log=lambda s: None)
    records = [json.loads((first.run_dir / n).read_text())
               for n in ("environment.json", "environment.2.json", "environment.3.json")]
    assert "resumed_from" not in records[0]
    assert records[1]["resumed_from"] == records[2]["resumed_from"] == str(ckpt)


@pytest.mark.parametrize("name", [".", "..", "./..", "_"])
def test_a_workflow_name_never_leaves_its_own_folder_under_runs(tmp_path, name):
    other = _checkpoint_in(executor.run_workflow(write(tmp_path, [("Source", "src", {})], "other"),
                                                 log=lambda s: None).run_dir)
    wf = tmp_path / "odd.json"
    wf.write_text(json.dumps({"workflow": name, "nodes": [{"type": "Source", "name": "src"}]}))
    result = executor.run_workflow(wf, resume="auto", log=lambda s: None)
    assert result.run_dir.parent.resolve() == (tmp_path / "runs" / "workflow").resolve()
    assert other.read_bytes() == b"x" and rundir.find_latest_checkpoint(name) is None
