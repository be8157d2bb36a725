"""MedicalSegmentationLoader's preflight: what only the world can say about its settings (the
splits file, the disk cache's folder, whether its batches fit in memory) stops `segflow run`
before any node starts, each problem at the key to change."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segflow.cli import main
from segflow.data import host_memory
from segflow.data.splits import read_folds
from segflow.nodes import data_preflight
from segflow.nodes.data import MedicalSegmentationLoaderConfig
from segflow.workflow import executor, spec
from segflow.workflow.errors import WorkflowError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = json.loads((ROOT / "workflows" / "quickstart.json").read_text())
GIB = 1024 ** 3


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quickstart's phantom goes nowhere: preflight writes nothing


def workflow(**loader) -> spec.Workflow:
    doc = json.loads(json.dumps(QUICKSTART))
    doc["nodes"][0]["config"].update(loader)
    return spec.loads(json.dumps(doc), "wf.json")


def preflight(**loader) -> list[tuple[str, str, str]]:
    """(code, node, JSON path) of each problem the run's preflight finds with these loader settings."""
    wf = workflow(**loader)
    try:
        executor.preflight(wf, wf.order(), None)
    except WorkflowError as e:
        return [(i.code, i.node, i.path) for i in e.issues]
    return []


def at(key: str) -> str:
    return f"nodes[0].config.{key}"


def small_machine(monkeypatch, gib: float = 2) -> None:
    monkeypatch.setattr(data_preflight, "available", lambda: (int(gib * GIB), "a test's figure"))


# ---- splits_file ----

def test_a_splits_file_that_is_a_folder_missing_or_not_json_stops_the_run(tmp_path):
    (tmp_path / "splits").mkdir()
    assert preflight(fold=0, splits_file="splits") == [("path_not_found", "data_loader", at("splits_file"))]
    with pytest.raises(ValueError, match="'splits' is a folder; it must name a JSON file"):
        read_folds(Path("splits"))  # the run says the same, where it used to raise IsADirectoryError
    assert preflight(fold=0, splits_file="gone.json") == [("path_not_found", "data_loader", at("splits_file"))]
    (tmp_path / "bad.json").write_text("{not json")
    assert preflight(fold=0, splits_file="bad.json") == [("bad_value", "data_loader", at("splits_file"))]
    (tmp_path / "two.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 2))
    assert preflight(fold=2, splits_file="two.json") == [("bad_value", "data_loader", at("fold"))]
    assert preflight(fold=1, splits_file="two.json") == []
    assert preflight(splits_file="splits") == []  # ignored without fold (validate warns)


def test_the_data_folders_own_splits_final_json_is_checked_too(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "splits_final.json").write_text(json.dumps({"train": [], "val": []}))
    assert preflight(data_dir="data", synthetic="none", fold=0) == [("bad_value", "data_loader", at("splits_file"))]
    assert preflight(data_dir="data", synthetic="none") == []  # no fold: the file is not read


# ---- cache_dir ----

def test_a_disk_cache_that_cannot_be_made_stops_the_run(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    assert preflight(cache="disk", cache_dir="notes.txt/cache") == [
        ("path_not_writable", "data_loader", at("cache_dir"))]
    assert preflight(cache="disk", cache_dir="notes.txt") == [("path_not_writable", "data_loader", at("cache_dir"))]
    assert preflight(cache="memory", cache_dir="notes.txt/cache") == []  # no disk cache, nothing to write
    # the default folder under data_dir: reported at cache_dir, the key that moves it
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".segflow_cache").write_text("a file")
    assert preflight(data_dir="data", synthetic="none", cache="disk") == [
        ("path_not_writable", "data_loader", at("cache_dir"))]


def test_a_cache_folder_still_to_be_made_passes_and_is_not_made(tmp_path):
    assert preflight(cache="disk", cache_dir="a/b/cache") == []
    assert not (tmp_path / "a").exists()


def test_a_read_only_cache_parent_stops_the_run(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir(mode=0o500)
    if os.name == "posix" and os.geteuid() == 0:  # root may write anywhere: answer as for anyone else
        locked, access = str(tmp_path / "locked"), os.access
        monkeypatch.setattr(data_preflight.os, "access", lambda p, mode: p != locked and access(p, mode))
    assert data_preflight.unwritable("locked/cache").endswith("which is not writable")
    assert preflight(cache="disk", cache_dir="locked/cache") == [("path_not_writable", "data_loader", at("cache_dir"))]


# ---- memory ----

def test_a_batch_that_cannot_fit_in_memory_stops_the_run_with_the_numbers(monkeypatch):
    small_machine(monkeypatch, 2)
    wf = workflow(image_size=4096, batch_size=64)
    with pytest.raises(WorkflowError) as e:
        executor.preflight(wf, wf.order(), None)
    (issue,) = e.value.issues
    assert (issue.code, issue.node, issue.path) == ("insufficient_memory", "data_loader", at("image_size"))
    # 64 × 4096² × (4 bytes of image + 1 of label) = 5 GiB a batch, 3 held with no workers
    assert "one training batch of 64 × 4096² float32 images" in issue.message
    assert "takes 5 GiB; the loader holds at least 3 batches at once" in issue.message
    assert "15 GiB or more, and this machine has 2 GiB available (a test's figure)" in issue.message
    assert "size_mode patches" in issue.hint
    small_machine(monkeypatch, 0.5)
    wf = workflow(image_size=1024, batch_size=16, num_workers=2, prefetch_factor=4)  # 80 MiB × (2 × 4 + 1)
    with pytest.raises(WorkflowError, match=r"takes 80 MiB; the loader holds at least 9 batches .*num_workers 2 "
                                            r"× prefetch_factor 4 prepared ahead\): 720 MiB or more"):
        executor.preflight(wf, wf.order(), None)
    assert preflight(image_size=1024, batch_size=16) == []  # 240 MiB with no workers: fits


def test_known_channels_count_and_3d_patches_are_sized_per_axis(monkeypatch):
    small_machine(monkeypatch, 0.1)
    cfg = MedicalSegmentationLoaderConfig(spatial_dims=3, image_size=[128, 128, 64], batch_size=4,
                                          channel_normalization=["zscore"] * 4)
    (finding,) = data_preflight.memory_findings(cfg)  # 4 × 128·128·64 × (4·4 + 1) = 68 MiB a batch
    assert "4 × 128×128×64 float32 images (4 channel(s))" in finding.message and "takes 68 MiB" in finding.message
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun: a loader in each of 8 processes here
    assert "(the one training, the next one's samples and their stacked copy) in each of 8 processes: " \
           "1.59 GiB or more" in data_preflight.memory_findings(cfg)[0].message


def test_the_shipped_workflows_fit_a_small_machine(monkeypatch):
    small_machine(monkeypatch, 1)
    for path in sorted((ROOT / "workflows").glob("*.json")):
        wf = spec.load(path)
        for node in wf.nodes.values():
            if node.type == "MedicalSegmentationLoader":
                assert data_preflight.memory_findings(node.config) == [], path.name


def test_validate_check_paths_leaves_this_machines_memory_out(tmp_path, monkeypatch, capsys):
    small_machine(monkeypatch, 2)
    doc = json.loads(json.dumps(QUICKSTART))
    doc["nodes"][0]["config"].update(image_size=4096, batch_size=64)
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert main(["validate", "--check-paths", "wf.json"]) == 0  # CI need not be the training machine
    assert main(["run", "wf.json"]) == 1
    assert "error[insufficient_memory] node 'data_loader' at nodes[0].config.image_size" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---- how much memory there is ----

def test_a_cgroup_limit_lowers_what_is_available(tmp_path, monkeypatch):
    group = tmp_path / "cgroup"
    group.mkdir()
    (group / "memory.max").write_text(f"{4 * GIB}\n")
    (group / "memory.current").write_text(f"{3 * GIB}\n")
    (group / "memory.stat").write_text(f"anon {2 * GIB}\ninactive_file {GIB}\n")  # page cache it can reclaim
    monkeypatch.setattr(host_memory, "_cgroup_files", lambda: [(group, "memory.max", "memory.current",
                                                                 "inactive_file")])
    monkeypatch.setattr(host_memory, "_meminfo_available", lambda: (10 * GIB, "MemAvailable"))
    assert host_memory.available() == (2 * GIB, "the cgroup memory limit less what the cgroup uses")
    (group / "memory.max").write_text("max\n")
    assert host_memory.available() == (10 * GIB, "MemAvailable")


def test_a_preflight_warning_is_shown_by_run_and_by_validate_check_paths(tmp_path, monkeypatch, capsys):
    from segflow.nodes.base import Finding
    from segflow.nodes.data import MedicalSegmentationLoader

    warning = Finding("cache_dir", "slow_disk", "the cache folder is on a network disk", severity="warning")
    monkeypatch.setattr(MedicalSegmentationLoader, "preflight", classmethod(lambda cls, config, device: [warning]))
    monkeypatch.chdir(tmp_path)
    doc = json.loads(json.dumps(QUICKSTART))
    doc["nodes"][0]["config"]["data_dir"] = str(tmp_path / "phantom")
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert main(["validate", "--check-paths", "wf.json"]) == 0
    assert "warning[slow_disk] node 'data_loader' at nodes[0].config.cache_dir" in capsys.readouterr().out
    lines = []
    executor.run_workflow("wf.json", until="data_loader", run_dir=tmp_path / "run", progress=False, log=lines.append)
    assert any("warning[slow_disk]" in line for line in lines)
