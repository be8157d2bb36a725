"""Exact resume: N+M epochs straight == N epochs, SIGKILL, resume, M more — bit for bit.

Each run is a real subprocess. The killed one SIGKILLs itself right after the checkpoint of epoch N
is on disk (a deterministic kill point; the process gets no chance to clean up). The data pipeline
draws from python's `random`, numpy and torch (shuffling, augmentation, dropout), so every RNG the
checkpoint restores matters. On CPU with one thread the arithmetic is deterministic, hence
bit-identical weights and history (timings excluded).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from segflow.training.artefacts import TIMING_KEYS

SCRIPT = textwrap.dedent("""
    import json, os, random, signal, sys
    from pathlib import Path
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from segflow.nodes.base import RunContext
    from segflow.nodes.training import Trainer
    from segflow.training import checkpoint
    import toy

    run_dir, epochs, resume, kill_after, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, int(sys.argv[4]), sys.argv[5]

    class Augmented(toy.Squares):
        def __getitem__(self, i):
            item = dict(super().__getitem__(i))
            if random.random() < 0.5:  # python RNG
                item["image"], item["label"] = item["image"].flip(-1), item["label"].flip(-1)
            item["image"] = item["image"] + torch.from_numpy(np.random.normal(0, 0.1, item["image"].shape).astype("float32"))
            return item

    if kill_after:
        real_save = checkpoint.atomic_save
        def save_then_die(obj, path):
            real_save(obj, path)
            if Path(path).name == "last.pt" and obj["epoch"] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.atomic_save = save_then_die

    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.2),
                                torch.nn.Conv2d(8, 2, 1))
    train = torch.utils.data.DataLoader(Augmented(12, 12, seed=0), batch_size=4, shuffle=True)
    val = torch.utils.data.DataLoader(toy.Squares(4, 12, seed=1), batch_size=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    ctx = RunContext(run_dir=Path(run_dir), workflow_name="resume", device="cpu", resume=resume, progress=False)
    cfg = Trainer.Config(epochs=epochs, lr_schedule="cosine", warmup_epochs=1, gradient_clip=0.5,
                         gradient_accumulation_steps=2, save_frequency=1, early_stopping=True, patience=50,
                         restore_best_weights=False, seed=7)
    result = Trainer("trainer", cfg, ctx).run(model=model, train_loader=train, val_loader=val,
                                              loss_fn=toy.CrossEntropy(), optimizer=opt)
    torch.save(result["model"].state_dict(), out)
""")


def _run(tmp_path, *args):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def _history(run_dir):
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_killed_and_resumed_run_matches_a_straight_run(tmp_path):
    n, m = 2, 2
    straight = _run(tmp_path, tmp_path / "straight", n + m, "", 0, tmp_path / "straight.pt")
    assert straight.returncode == 0, straight.stderr

    killed = _run(tmp_path, tmp_path / "resumed", n + m, "", n, tmp_path / "never.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == n  # killed right after this write
    resumed = _run(tmp_path, tmp_path / "resumed", n + m, last, 0, tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {last} at epoch {n}/{n + m}" in resumed.stdout

    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _history(tmp_path / "resumed") == _history(tmp_path / "straight")
    assert len(_history(tmp_path / "straight")) == n + m
