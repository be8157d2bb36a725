"""DistributedDataParallel through torchrun: real 2-process gloo jobs on CPU on the 2-D phantom.

Each job is a subprocess started through torch.distributed.run (torchrun's entry point), as users
start them. One job records which cases each rank trained on through a small wrapper script that
patches the loop before calling segflow's CLI; the resume job goes through
`python -m segflow run --nproc-per-node 2`.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segflow.data.loader import ShardSampler

ROOT = Path(__file__).resolve().parents[1]

# 11 cases, val_fraction 0.25: 8 training cases (4 per rank, no padding duplicates) and 3 validation
# cases (odd: a padding sampler would count one twice)
WORKFLOW = {
    "workflow": "ddp test",
    "nodes": [
        {"type": "MedicalSegmentationLoader", "name": "data_loader",
         "config": {"data_dir": "data/phantom2d", "synthetic": "phantom2d", "synthetic_cases": 11,
                    "image_size": 32, "batch_size": 2, "augmentation": True, "val_fraction": 0.25, "seed": 0}},
        # batch norm: each rank's running statistics drift apart in training, so the validation test
        # also checks that every rank validates with the statistics the checkpoint holds (rank 0's)
        {"type": "UNet2D", "name": "model", "config": {"in_channels": 1, "out_channels": 2, "base_channels": 4,
                                                      "depth": 3, "norm": "batch"}},
        {"type": "LossFunction", "name": "loss", "config": {"loss_type": "combined"}},
        {"type": "Optimizer", "name": "optimizer", "config": {"optimizer_type": "Adam", "learning_rate": 0.01}},
        {"type": "Trainer", "name": "trainer", "config": {"epochs": 2, "device": "cpu", "save_frequency": 1,
                                                          "keep_last": 5}},
    ],
}

# UNETR leaves parameters without gradient (its ViT blocks build a cross-attention LayerNorm they never
# call); with batch norm in its decoder it also has BatchNorm layers for sync_batchnorm to decide on
UNETR_WORKFLOW = {
    "workflow": "ddp test",
    "nodes": [WORKFLOW["nodes"][0],
              {"type": "UNETR", "name": "model",
               "config": {"in_channels": 1, "out_channels": 2, "spatial_dims": 2, "img_size": 32, "feature_size": 4,
                          "hidden_size": 32, "mlp_dim": 32, "num_heads": 2, "norm": "batch"}},
              *WORKFLOW["nodes"][2:4],
              {"type": "Trainer", "name": "trainer", "config": {"epochs": 1, "device": "cpu"}}],
}

# Runs segflow's CLI in each worker after patching the loop to record the cases a rank trains on.
RECORDER = textwrap.dedent("""
    import json, os, sys
    from segflow.training import loop
    from segflow.cli import main

    seen = {}
    real_epoch, real_prepare = loop.TrainingRun.train_epoch, loop.TrainingRun._prepare
    def train_epoch(self, epoch):
        self.now = epoch
        return real_epoch(self, epoch)
    def prepare(self, batch, *rest):
        if self.model.training:
            seen.setdefault(self.now, []).extend(batch["case"])
        return real_prepare(self, batch, *rest)
    loop.TrainingRun.train_epoch, loop.TrainingRun._prepare = train_epoch, prepare
    if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
        def validate(self, epoch):
            raise RuntimeError("boom on rank " + os.environ["RANK"])
        loop.TrainingRun.validate = validate
    code = main(sys.argv[1:])
    with open(f"seen_rank{os.environ['RANK']}.json", "w") as f:
        json.dump(seen, f)
    sys.exit(code)
""")



def run_dirs(cwd):
    """The job's run directories (runs/<workflow>/latest is only a pointer to one of them)."""
    return [p for p in (cwd / "runs" / "ddp_test").iterdir() if not p.is_symlink()]

def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SEGFLOW_DIST_TIMEOUT="60")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _torchrun(cwd: Path, args: list[str], extra_env=None, timeout=150):
    script = cwd / "recorder.py"
    script.write_text(RECORDER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), *args]
    return subprocess.run(cmd, cwd=cwd, env={**_env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _val_dice_single_process(cwd: Path, weights: dict) -> dict:
    """The validation metrics one process computes over the whole validation set with `weights`."""
    from segflow.data.loader import build_loaders
    from segflow.training.metrics import ConfusionMeter
    from segflow.workflow import spec

    wf = spec.load(cwd / "wf.json")
    here = os.getcwd()
    os.chdir(cwd)
    try:
        _, val_loader, _ = build_loaders(wf.nodes["data_loader"].config, log=lambda m: None)
    finally:
        os.chdir(here)
    from monai.networks.nets import UNet  # noqa: F401  (the node builds MONAI's UNet)

    from segflow.nodes import registry

    model = registry.get("UNet2D")("model", wf.nodes["model"].config, None).run()["model"]
    model.load_state_dict(weights)
    model.eval()
    meter = ConfusionMeter(2, torch.device("cpu"))
    with torch.no_grad():
        for batch in val_loader:
            meter.update(model(batch["image"]), batch["label"], batch["case"])
    assert int(meter.matrix.sum()) == 3 * 32 * 32  # each validation image once
    return meter.compute()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One 2-process, 2-epoch job; later tests read what it left behind."""
    cwd = tmp_path_factory.mktemp("ddp")
    (cwd / "wf.json").write_text(json.dumps(WORKFLOW))
    done = _torchrun(cwd, ["run", "wf.json", "--no-progress"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return cwd, done


def test_shard_sampler_gives_every_index_to_exactly_one_rank():
    for n, world in [(3, 2), (7, 3), (1, 4), (8, 2)]:
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_each_rank_seeds_the_trainer_with_a_seed_of_its_own(tmp_path, monkeypatch):
    """Ranks share the Trainer's seed setting, not its random streams (dropout, device augmentation)."""
    import toy

    from segflow.nodes.base import RunContext
    from segflow.nodes.training import Trainer
    from segflow.training import loop
    from segflow.workflow import distributed

    assert distributed.rank_seed(7) == 7  # one process: the seed as given
    seeds = []
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        model = toy.tiny_net()
        ctx = RunContext(run_dir=tmp_path / rank, workflow_name="t", device="cpu", progress=False, log=lambda m: None)
        loop.TrainingRun(Trainer.Config(seed=7), ctx, "trainer", model, *toy.loaders(), toy.CrossEntropy(),
                 torch.optim.SGD(model.parameters(), lr=0.1))
        seeds.append(torch.initial_seed())
    assert seeds[0] == 7 and seeds[1] != 7


def test_two_ranks_train_on_disjoint_shards_reshuffled_each_epoch(job):
    cwd, _ = job
    seen = [json.loads((cwd / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("1", "2"):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == 4
        assert not set(a) & set(b)
        assert len(set(a) | set(b)) == 8  # the whole training split, each case once
    assert seen[0]["1"] != seen[0]["2"]  # set_epoch: a new shuffle every epoch


def test_one_run_directory_one_set_of_checkpoints(job):
    cwd, done = job
    runs = run_dirs(cwd)
    assert len(runs) == 1, runs
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "epoch_0001.pt", "epoch_0002.pt",
                                                                        "last.pt"]
    env = json.loads((run / "environment.json").read_text())
    assert env["distributed"] == {"world_size": 2, "backend": "gloo"}
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one events file: rank 0's
    assert done.stdout.count("segflow: finished") == 1  # rank 1 logs nothing
    assert done.stdout.count("epoch 2/2") == 1


def test_validation_dice_is_the_whole_validation_sets(job):
    cwd, _ = job
    (run,) = run_dirs(cwd)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(last["rng_ranks"]) == 2
    expected = _val_dice_single_process(cwd, last["model"])
    assert last["history"][-1]["val_dice"] == pytest.approx(expected["dice"], abs=1e-6)
    # the per-case mean gathers each rank's cases
    assert last["history"][-1]["val_dice_case_mean"] == pytest.approx(expected["dice_case_mean"], abs=1e-6)
    assert expected["dice_case_mean"] != pytest.approx(expected["dice"], abs=1e-6)


def test_resume_two_process_job_through_the_cli_launcher(job):
    cwd, _ = job
    (run,) = run_dirs(cwd)
    before = json.loads((run / "history.json").read_text())
    cmd = [sys.executable, "-m", "segflow", "run", "wf.json", "--nproc-per-node", "2", "--resume", "auto",
           "--set", "trainer.epochs=3", "--no-progress"]
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "resumed from" in done.stdout and "at epoch 2/3" in done.stdout
    assert len(run_dirs(cwd)) == 1  # went on writing in the same run
    after = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert [r["train_loss"] for r in after[:2]] == [r["train_loss"] for r in before]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3


def test_a_failing_rank_stops_the_job_with_its_error(tmp_path):
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    # rank 1 raises in validation while rank 0 waits in the validation all-reduce: without
    # torchrun stopping the job this would hang until the subprocess timeout fails the test
    done = _torchrun(tmp_path, ["run", "wf.json", "--no-progress"], {"FAIL_RANK": "1"}, timeout=120)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "segflow [rank 1]: " in out and "boom on rank 1" in out
    assert "segflow: finished" not in out
    # rank 0 was stopped (by gloo's closed connection or torchrun's SIGTERM), not left waiting
    assert "Connection closed by peer" in out or "SIGTERM" in out


def test_every_parameter_used_means_no_unused_parameter_search(job):
    _, done = job
    assert done.stdout.count("DistributedDataParallel over 2 process(es): find_unused_parameters false (auto: every "
                             "trainable parameter gets a gradient), sync_batchnorm false (auto: cpu, not CUDA)") == 1
    assert "get no gradient (" not in done.stdout


def test_unetr_trains_with_default_settings_and_the_log_names_its_unused_parameters(tmp_path):
    (tmp_path / "wf.json").write_text(json.dumps(UNETR_WORKFLOW))
    done = _torchrun(tmp_path, ["run", "wf.json", "--no-progress"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    out = done.stdout
    assert out.count("Trainer 'trainer': 24 of 236 trainable parameters get no gradient "
                     "(vit.blocks.0.norm_cross_attn.weight, vit.blocks.0.norm_cross_attn.bias, ") == 1
    assert '"freeze": ["vit.blocks.*.norm_cross_attn"]' in out
    # batch norm on CPU: per-process statistics, without SyncBatchNorm's GPU-only error
    assert ("find_unused_parameters true (auto: 24 parameters get no gradient), "
            "sync_batchnorm false (auto: cpu, not CUDA)") in out
    (run,) = run_dirs(tmp_path)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_find_unused_parameters_false_with_unused_parameters_names_the_field(tmp_path):
    (tmp_path / "wf.json").write_text(json.dumps(UNETR_WORKFLOW))
    done = _torchrun(tmp_path, ["run", "wf.json", "--no-progress", "--set", "trainer.find_unused_parameters=false",
                                "--set", "trainer.sync_batchnorm=true"])
    assert done.returncode != 0
    out = done.stdout + done.stderr
    # sync_batchnorm true on CPU: one line, then per-process statistics (the job fails for the other reason)
    assert "sync_batchnorm is true, but torch's SyncBatchNorm runs on GPUs only; training on cpu" in out
    assert "SyncBatchNorm layers only work with GPU modules" not in out
    # DDP fails at the step after the one that left parameters without gradient; the error names the field
    assert ("node 'trainer' (Trainer) failed: Trainer 'trainer': DistributedDataParallel found trainable parameters "
            "that got no gradient (24: vit.blocks.0.norm_cross_attn.weight, ") in out
    assert "set find_unused_parameters to auto (or true) on this Trainer" in out
