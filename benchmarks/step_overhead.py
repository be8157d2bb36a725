"""Engine overhead per training step, counted as well as timed: what segflow's Trainer adds to a plain
PyTorch loop doing the same step at identical settings (fp32, no compile, no clipping, one process).

    python benchmarks/step_overhead.py            # JSON lines: plain, segflow, segflow-plain
    python benchmarks/step_overhead.py --device cuda

ops_per_step   ATen operations dispatched per training step, counted with a TorchDispatchMode over
               epochs of N and 2N batches and differenced, so per-epoch work (the epoch-end sync,
               loader start-up) drops out. On a GPU nearly every operation is one kernel launch, and a
               small network's step is bound by launches, so this is the overhead that can show there;
               it is a count, the same on every machine.
host_us        wall time per step (fastest of --repeats epochs of each length) on a network small enough
               that the host's Python and dispatch work dominates; noisy on a busy machine.
The Trainer's extras per step are the copy of the loss into its per-epoch device tensor and, every
10th optimizer step, the gradient norm (segflow.training.loop.GRAD_NORM_EVERY).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # toy.py: the tests' tiny problem


def _setup(device: str, batches: int, seed: int = 0):
    import torch
    import toy
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    model = toy.tiny_net().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(toy.Squares(4 * batches, 16, seed=seed), batch_size=4, shuffle=False)
    return model, opt, loader, toy.CrossEntropy()


def plain_epoch(model, opt, loader, loss_fn, device: str) -> None:
    """The race's plain step (benchmarks/race.py): loss kept on the device, one sync per epoch."""
    import torch

    dev = torch.device(device)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    total = torch.zeros((), device=dev)
    for batch in loader:
        x = batch["image"].to(dev, non_blocking=True)
        y = batch["label"].to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total += loss.detach()
    float(total)


def segflow_fit(model, opt, loader, loss_fn, device: str, run_dir: Path):
    """A Trainer's loop (segflow.training.loop.TrainingRun) at the plain loop's settings."""
    from segflow.nodes.base import RunContext
    from segflow.nodes.training import TrainerConfig
    from segflow.training.loop import TrainingRun

    cfg = TrainerConfig(epochs=1000, device=device, mixed_precision=False, compile=False, channels_last=False,
                        seed=None)
    ctx = RunContext(run_dir=run_dir, workflow_name="overhead", device=device, progress=False, log=lambda m: None)
    return TrainingRun(cfg, ctx, "trainer", model, loader, None, loss_fn, opt)


def count_ops(run) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        run()
    return Counter.n


def measure(device: str, batches: int = 20, repeats: int = 20) -> list[dict]:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain", "segflow"):
            per_epoch = {}
            for n in (batches, 2 * batches):
                model, opt, loader, loss_fn = _setup(device, n)
                if name == "plain":
                    def run(m=model, o=opt, ld=loader, lf=loss_fn):
                        plain_epoch(m, o, ld, lf, device)
                else:
                    fit = segflow_fit(model, opt, loader, loss_fn, device, Path(tmp) / f"run{n}")
                    epoch = iter(range(1, 10_000))

                    def run(f=fit, e=epoch):
                        f.train_epoch(next(e))
                run()  # first epoch: one-time work (the label check, lazy imports) stays out of the counts
                ops = count_ops(run)
                times = []
                for _ in range(repeats):  # the fastest epoch: the least disturbed by anything else running
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                per_epoch[n] = (ops, min(times))
            (ops1, t1), (ops2, t2) = per_epoch[batches], per_epoch[2 * batches]
            rows[name] = {"loop": name, "device": device, "ops_per_step": (ops2 - ops1) / batches,
                          "host_us": 1e6 * (t2 - t1) / batches}
    extra = {"loop": "segflow-plain", "device": device,
             "ops_per_step": rows["segflow"]["ops_per_step"] - rows["plain"]["ops_per_step"],
             "host_us": rows["segflow"]["host_us"] - rows["plain"]["host_us"]}
    return [rows["plain"], rows["segflow"], extra]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=20, help="batches in the short epoch (the long one has twice)")
    ap.add_argument("--repeats", type=int, default=20, help="timed epochs of each length (the fastest counts)")
    args = ap.parse_args(argv)
    rows = measure(args.device, args.batches, args.repeats)
    for row in rows:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


if __name__ == "__main__":
    main()
