#!/usr/bin/env bash
# Everything a session with the GPU machine runs, in as few device calls as possible.
# Prepare once on the developer machine (see docs/benchmarks.md, "On the GPU machine"): wheels in .whl/
# and the shared baseline copied to .whl/monai_reference_e2e.py. Then one device `run` per group, with
# carry [".whl"], each inside the 600 s limit:
#   bash benchmarks/gpu_session.sh product          # segflow run workflows/swin_unetr.json, 2 epochs, then --resume auto to 3
#   bash benchmarks/gpu_session.sh tests            # pytest -m gpu: CUDA, bf16, fp16+scaler, compile, 1-GPU nccl DDP
#   bash benchmarks/gpu_session.sh race-identical   # engine overhead at identical settings (target within 3%)
#   bash benchmarks/gpu_session.sh race-fast        # segflow's fast path against the same plain loop
#   bash benchmarks/gpu_session.sh race-dice        # validation Dice of both loops after the same 500 steps, 2 seeds
#   bash benchmarks/gpu_session.sh baseline         # ../shared/bench/monai_reference_e2e.py, same session
#   bash benchmarks/gpu_session.sh loader           # loader throughput (workers vs GPU augmentation), data race
# With 15 minutes of device time (start-up included) two calls: `call1` = product tests baseline race-identical
# race-fast, `call2` = race-dice loader. REHEARSE=1 runs `product` on this machine's CPU at a tiny size.
# Logs land in $OUT (the device tool brings them back), with summary.md from benchmarks/summarize.py;
# a later call's $OUT is empty, so run summarize.py here over all the calls' logs to judge them together.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/segflow-gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv > "$OUT/gpu.csv" 2>&1
# the product's own command: the shipped SwinUNETR workflow for a few epochs, then resumed
PRODUCT=(workflows/swin_unetr.json --no-progress --set trainer.validate_every=1 --set trainer.warmup_epochs=1)
FRESH=()
if [ "${REHEARSE:-0}" = 1 ]; then
  PRODUCT+=(--device cpu --set data_loader.image_size=64 --set model.feature_size=12 --set data_loader.synthetic_cases=4
            --run-dir "$OUT/rehearsal_run")
  FRESH=(--overwrite)
fi
groups=("$@")
[ "${groups[*]}" = call1 ] && groups=(product tests baseline race-identical race-fast)
[ "${groups[*]}" = call2 ] && groups=(race-dice loader)
for group in "${groups[@]}"; do
  case "$group" in
    product) { python3 -m segflow run "${PRODUCT[@]}" "${FRESH[@]}" --set trainer.epochs=2 &&
               python3 -m segflow run "${PRODUCT[@]}" --set trainer.epochs=3 --resume auto
               ls -l runs/swin_unetr/latest/ runs/swin_unetr/latest/checkpoints/ "$OUT/rehearsal_run" 2>/dev/null
             } 2>&1 | tee "$OUT/product.log" ;;
    tests) python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" ;;
    race-identical) { python3 benchmarks/step_overhead.py --device cuda
                      python3 benchmarks/race.py --settings identical --device cuda --steps 40 --warmup 1 --epochs 2
                    } 2>&1 | tee "$OUT/race_identical.log" ;;
    race-fast) python3 benchmarks/race.py --settings fast --device cuda --steps 40 --warmup 1 --epochs 2 \
                 2>&1 | tee "$OUT/race_fast.log" ;;
    race-dice) for seed in 0 1; do
                 python3 benchmarks/race.py --settings fast --device cuda --cases unet2d,swin3d --steps 100 \
                   --warmup 1 --epochs 4 --lr 1e-3 --seed "$seed"
               done 2>&1 | tee "$OUT/race_dice.log" ;;
    baseline) python3 .whl/monai_reference_e2e.py 2>&1 | tee "$OUT/baseline_e2e.log" ;;
    loader) { python3 benchmarks/loader_throughput.py --workers 0,8 --augmentation-on workers,device --batches 60 \
                --device cuda
              python3 benchmarks/data_race.py --workers 0,4,8 --step-ms 0,target --batches 100
            } 2>&1 | tee "$OUT/loader_throughput.log" ;;
    *) echo "unknown group: $group (product, tests, race-identical, race-fast, race-dice, baseline, loader)"; exit 2 ;;
  esac
done
# the tables and the targets' verdicts from every log of this call (PASS / FAIL / – per target)
python3 benchmarks/summarize.py "$OUT"/*.log > "$OUT/summary.md" 2>&1 && cat "$OUT/summary.md"
