"""Turn the JSON lines of a benchmark session into the tables docs/benchmarks.md records, and check
them against the speed issue's targets.

    python benchmarks/summarize.py $OUT/*.log              # logs from benchmarks/gpu_session.sh
    python benchmarks/summarize.py race.log baseline.log

Reads every line that parses as a JSON object and recognises three kinds: race.py rows (a "loop"
and "settings"), rows of the shared MONAI end-to-end baseline (`monai_reference_e2e.py`: "kind",
"step_ms", "samples_s") and data_race.py rows (a "loop" and "workers"); other lines are skipped.
Prints markdown: the race rows, the data race rows, then each target with its figure and PASS,
FAIL, or "–" where the logs hold nothing to judge it by. Several race rows of one kind (seeds,
repeats) are averaged.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# the targets: end-to-end speed-up over the baseline, and the absolute figure it implies
SPEEDUP = {"swin3d": 2.0, "unet2d": 4.0}
ABSOLUTE = {"swin3d": ("step_ms", "<=", 72.0), "unet2d": ("images_s", ">=", 1260.0)}
MAX_DATA_WAIT = 0.05
IDENTICAL_WITHIN = 0.03
DICE_WITHIN = 0.01


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        if not path.is_file():  # an unmatched shell glob, or a group that wrote no log
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("PASS" if ok else "FAIL")


def _steps(row: dict) -> int:
    return int(row.get("steps_per_epoch", 0)) * (int(row.get("warmup", 0)) + int(row.get("epochs", 0)))


def summarize(rows: list[dict]) -> str:
    race = [r for r in rows if "settings" in r and "loop" in r]
    data = [r for r in rows if "workers" in r and "loop" in r and "settings" not in r]
    baseline = {r["kind"]: r for r in rows if {"kind", "step_ms", "samples_s"} <= r.keys()}
    out = ["| case | settings | loop | step_ms | images_s | data_wait | TFLOP/s | peak GiB | val Dice | runs |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in race:
        groups.setdefault((r["case"], r["settings"], r["loop"]), []).append(r)
    for (case, settings, loop), rs in groups.items():
        if loop == "segflow/plain":
            continue
        out.append(f"| {case} | {settings} | {loop} | {_fmt(_mean(rs, 'step_ms'))} | {_fmt(_mean(rs, 'images_s'))} | "
                   f"{_fmt(_mean(rs, 'data_wait_frac'), 2)} | {_fmt(_mean(rs, 'tflops'))} | "
                   f"{_fmt(_mean(rs, 'peak_gib'))} | {_fmt(_mean(rs, 'val_dice'))} | {len(rs)} |")
    for kind, b in baseline.items():
        out.append(f"| {kind} | MONAI e2e baseline | tutorial | {_fmt(b['step_ms'])} | {_fmt(b['samples_s'])} | "
                   f"{_fmt(b.get('data_wait_frac'), 2)} | – | – | – | 1 |")
    if data:
        out += ["", "| case | workers | step_ms | loop | samples/s | data_wait |", "|---|---|---|---|---|---|"]
        out += [f"| {r['case']} | {r['workers']} | {_fmt(r['step_ms'])} | {r['loop']} | {_fmt(r['samples_s'])} | "
                f"{_fmt(r.get('data_wait_frac'), 2)} |" for r in data]
    out += ["", "| target | figure | verdict |", "|---|---|---|"]
    for case in SPEEDUP:
        fast = groups.get((case, "fast", "segflow"), [])
        images = _mean(fast, "images_s")
        base = baseline.get(case, {}).get("samples_s")
        ratio = images / base if images and base else None
        out.append(f"| {case}: ≥ {SPEEDUP[case]:g}× the MONAI e2e baseline (images/s, fast) | "
                   f"{_fmt(ratio)}{'×' if ratio else ''} | "
                   f"{_verdict(None if ratio is None else ratio >= SPEEDUP[case])} |")
        key, op, bound = ABSOLUTE[case]
        value = _mean(fast, key)
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append(f"| {case}: {key} {op} {bound:g} (fast) | {_fmt(value)} | {_verdict(ok)} |")
        wait = _mean(fast, "data_wait_frac")
        out.append(f"| {case}: data wait < {MAX_DATA_WAIT:g} (fast) | {_fmt(wait, 2)} | "
                   f"{_verdict(None if wait is None else wait < MAX_DATA_WAIT)} |")
        same = _mean(groups.get((case, "identical", "segflow/plain"), []), "step_ms")
        out.append(f"| {case}: identical settings within {IDENTICAL_WITHIN:.0%} (step time segflow/plain) | "
                   f"{_fmt(same)} | {_verdict(None if same is None else same <= 1 + IDENTICAL_WITHIN)} |")
        # Dice is judged on the longest-trained runs only (race-dice's), where short runs' noise has settled
        scored = [r for s in ("fast", "identical") for r in groups.get((case, s, "segflow/plain"), [])
                  if isinstance(r.get("dice_diff"), (int, float))]
        longest = max((_steps(r) for r in scored), default=0)
        diffs = [r["dice_diff"] for r in scored if _steps(r) == longest]
        diff = statistics.fmean(diffs) if diffs else None
        out.append(f"| {case}: validation Dice within {DICE_WITHIN:g} of the plain loop (mean of {len(diffs)} "
                   f"run(s) of {longest} steps) | {_fmt(diff)} | "
                   f"{_verdict(None if diff is None else abs(diff) <= DICE_WITHIN)} |")
    return "\n".join(out)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    text = summarize(read_rows(args.logs))
    print(text)
    return text


if __name__ == "__main__":
    main()
