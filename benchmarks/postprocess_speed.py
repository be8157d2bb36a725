"""How long keeping the largest connected component takes on one 3-D label map (CPU, one thread).

    python benchmarks/postprocess_speed.py [--size 256] [--repeats 5]

Two label maps of size³ voxels with 3 foreground classes (a large organ, a core inside it, a small
lesion beside it):
  * "blobs": plus 40 spurious cubes of random classes scattered through the volume, what an
    undertrained network leaves;
  * "speckle": plus 0.5% of all voxels set to a random class, tens of thousands of components, the
    worst case for labelling.
For each: the foreground taken together (one step), each of the 3 classes (three steps), and
`count_case`, the Trainer's per-case counting for the decision (every trial at once). Prints one
row per prediction: for each measurement the best wall-clock time and the median CPU time of
`--repeats` runs, in ms per volume.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage

from segflow.inference.postprocess import PostProcessing
from segflow.inference.postprocess_choice import count_case


def label_map(n: int, extra: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) uint8 maps of shape (n, n, n); the prediction is the truth plus `extra`."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:n, :n, :n]
    c = n / 2
    truth = np.zeros((n, n, n), np.uint8)
    truth[((z - c) / (0.3 * n)) ** 2 + ((y - c) / (0.25 * n)) ** 2 + ((x - c) / (0.35 * n)) ** 2 <= 1] = 1
    truth[((z - c) / (0.08 * n)) ** 2 + ((y - c) / (0.08 * n)) ** 2 + ((x - c) / (0.1 * n)) ** 2 <= 1] = 2
    truth[((z - c) / (0.04 * n)) ** 2 + ((y - 0.85 * n) / (0.04 * n)) ** 2 + ((x - c) / (0.04 * n)) ** 2 <= 1] = 3
    pred = truth.copy()
    if extra == "blobs":
        side = max(2, n // 64)
        for _ in range(40):
            a = rng.integers(0, n - side, 3)
            pred[a[0]:a[0] + side, a[1]:a[1] + side, a[2]:a[2] + side] = rng.integers(1, 4)
    else:
        flat = rng.choice(pred.size, pred.size // 200, replace=False)
        pred.ravel()[flat] = rng.integers(1, 4, flat.size)
    return pred, truth


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall-clock ms, median CPU ms of this process). Everything here runs on one thread, so on
    an idle machine the two agree; on a shared one the CPU time is the figure that does not depend
    on the neighbours."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - started) * 1e3)
        cpu.append((time.process_time() - started_cpu) * 1e3)
    return min(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic volume in voxels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    foreground, per_class = PostProcessing(((1, 2, 3),)), PostProcessing(((1,), (2,), (3,)))
    print(f"volume {args.size}^3 uint8, 3 foreground classes, {args.repeats} repeats; ms per volume "
          "(best wall / median CPU)")
    print(f"{'prediction':<10} {'components':>10} {'foreground LCC':>18} {'per-class LCC (3)':>18} "
          f"{'count_case':>18}")
    for extra in ("blobs", "speckle"):
        pred, truth = label_map(args.size, extra)
        components = ndimage.label(pred != 0, structure=np.ones((3, 3, 3), bool))[1]
        assert (foreground.apply(pred) != 0).sum() < (pred != 0).sum()  # it did remove something
        cells = [timed(lambda: step.apply(pred), args.repeats) for step in (foreground, per_class)]
        cells.append(timed(lambda: count_case(pred, truth, 4), args.repeats))
        print(f"{extra:<10} {components:>10} " + " ".join(f"{f'{b:.0f} / {m:.0f}':>18}" for b, m in cells))


if __name__ == "__main__":
    main()
