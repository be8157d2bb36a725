"""The Trainer's post-processing decision (postprocessing: auto): once training has ended, nnU-Net's
rule (`segflow.inference.postprocess_choice`) decides on the validation cases, predicted with the
output weights, whether keeping the largest connected component raises their mean Dice. The rule,
with the Dice before and after per class, goes into the run directory as postprocessing.json, which
a Predictor with postprocessing "auto" applies.

The last epoch's validation counts its cases on the way (a few numbers per class and case, no label
map kept), so when the output weights are the last epoch's (best or last) no second pass is needed;
otherwise the validation cases are predicted once more. The label maps are those validation sees:
on the loader's grid (resampled to target_spacing, 2-D images resized to image_size), not the
source files' grid that nnU-Net decides on. Under torchrun each process counts its own validation
shard and rank 0 decides for all.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from segflow.inference.postprocess import FILE_NAME, PostProcessing
from segflow.inference.postprocess_choice import CaseCounts, choose, count_case
from segflow.training.metrics import _case_ids
from segflow.workflow import distributed


class CaseCounter:
    """Counts each validation image as it is predicted (`count_case`: a few numbers per class), so no
    label map is kept; an image is a case, named by the batch's case ids when it has them."""

    def __init__(self):
        self.counted: list[CaseCounts] = []
        self.classes = 2
        self.seconds = 0.0  # spent counting (labelling components), not predicting

    def add(self, logits: torch.Tensor, label: torch.Tensor, cases: Any = None) -> None:
        """`logits` (B, C, *S) as validation computes them, `label` (B, 1, *S) class indices."""
        self.classes = max(self.classes, logits.shape[1])
        pred = (logits[:, 0] > 0) if logits.shape[1] == 1 else logits.argmax(1)
        pred = pred.to(torch.uint8 if self.classes <= 256 else torch.int16).cpu().numpy()
        truth = label[:, 0].cpu().numpy()
        started = time.perf_counter()
        ids = _case_ids(cases, len(pred)) or [f"image_{len(self.counted) + i}" for i in range(len(pred))]
        for i, case in enumerate(ids):
            self.counted.append(count_case(pred[i], truth[i], self.classes, case))
        self.seconds += time.perf_counter() - started


def decide(counter: CaseCounter, run_dir: Path, who: str, log: Callable[[str], None],
           about: dict[str, Any]) -> Path:
    """Choose the rule from every process's counted cases and, on rank 0, write it to
    run_dir/postprocessing.json with the Dice before and after per class; returns that path."""
    started = time.perf_counter() - counter.seconds
    parts = distributed.gather_objects((counter.counted, counter.classes))
    counted = [c for part, _ in parts for c in part]
    rule, lines = choose(counted, max(n for _, n in parts))
    path = Path(run_dir) / FILE_NAME
    if not distributed.is_main():
        return path
    seconds = time.perf_counter() - started + about.get("prediction_seconds", 0.0)
    rule = PostProcessing(rule.steps, {**rule.report, "decided_by": {
        **about, "grid": "the validation loader's", "seconds": round(seconds, 3)}})
    rule.write(path)
    for line in lines:
        log(f"{who}: post-processing on {len(counted)} validation case(s): {line}")
    dice = rule.report.get("dice")
    if dice:
        before, after = dice["before"], dice["after"]
        per_class = ", ".join(f"class {c} {_fmt(v)} -> {_fmt(after['classes'].get(c))}"
                              for c, v in before["classes"].items())
        log(f"{who}: post-processing chosen: {rule.describe()}; mean Dice {_fmt(before['mean'])} -> "
            f"{_fmt(after['mean'])} ({per_class}); {seconds:.1f}s; written to {path}")
    return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
