#!/usr/bin/env bash
# The pi0-FAST vs pi0 table and the real-time chunking table of docs/benchmarks.md, end to end on a 2-core CPU (about 2.5 h):
#   1. record EPISODES scripted transfer-cube demonstrations (one recording for both models);
#   2. norm stats over 50-step chunks (pi0_aloha_sim_small) and over 10-step chunks with a FAST tokenizer
#      (pi0_fast_aloha_sim_small), each in its own work folder;
#   3. calibrate: both presets train CALIBRATION steps at once, one core each (taskset), and the median steps/s
#      of each sets its step count for BUDGET_S seconds of training;
#   4. train both at once, one core each, for that same wall-clock budget;
#   5. benchmarks/bench_fast_vs_pi0.py (closed loop on the same unseen scenes, latency and tokens per chunk) on
#      one core while benchmarks/bench_rtc.py runs latencies 0 and 100 ms on the other, then 200 and 300 ms;
#      the two RTC halves are merged into one table.
# Sizes come from the environment (defaults: the run in docs/benchmarks.md). Results land in $WORK/results/.
set -euo pipefail

EPISODES=${EPISODES:-50}
BUDGET_S=${BUDGET_S:-3120}
CALIBRATION=${CALIBRATION:-150}
EVAL_EPISODES=${EVAL_EPISODES:-20}
RTC_EPISODES=${RTC_EPISODES:-20}
FAST_VOCAB=${FAST_VOCAB:-512}
WORK=${WORK:-runs/small_benchmarks}

repo=$(cd "$(dirname "$0")/.." && pwd)
pi0=${PI0:-$repo/.venv/bin/pi0}
python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$WORK/fast" "$WORK/results"
cd "$WORK"
export HF_HUB_OFFLINE=1 HF_LEROBOT_HOME="$PWD/lerobot-home" MUJOCO_GL="${MUJOCO_GL:-egl}"

steps_for() {  # a calibration run's median steps/s (bench_fast_vs_pi0's rule) x BUDGET_S
  "$python" - "$1" "$BUDGET_S" "$repo/benchmarks" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[3])
from bench_fast_vs_pi0 import median_steps_per_s
rates = [json.loads(line)["steps_per_s"] for line in open(sys.argv[1]) if line.strip()]
print(int(median_steps_per_s(rates) * float(sys.argv[2])))
EOF
}

echo "== 1/5 record $EPISODES scripted demonstrations (scenes 0..), and 10 held-out ones (scenes 500..)"
"$pi0" record aloha_sim --scripted --episodes "$EPISODES" --out demos --overwrite
"$pi0" record aloha_sim --scripted --episodes 10 --seed 500 --out heldout --overwrite
echo "== 2/5 norm stats (pi0: 50-step chunks; pi0-FAST: 10-step chunks and a FAST tokenizer of $FAST_VOCAB ids)"
"$pi0" norm-stats aloha_sim --dataset demos --preset pi0_aloha_sim_small --out assets
(cd fast && "$pi0" norm-stats aloha_sim --dataset ../demos --preset pi0_fast_aloha_sim_small --fast-tokenizer \
  --vocab-size "$FAST_VOCAB" --out assets)

echo "== 3/5 calibrate: $CALIBRATION steps of each at once, one core each"
taskset -c 0 "$pi0" train pi0_aloha_sim_small --dataset demos --steps "$CALIBRATION" --exp calib --overwrite \
  --log-interval 25 > calib_pi0.log 2>&1 &
pid=$!
(cd fast && taskset -c 1 "$pi0" train pi0_fast_aloha_sim_small --dataset ../demos --steps "$CALIBRATION" \
  --exp calib --overwrite --log-interval 25) > calib_fast.log 2>&1
wait "$pid"  # a failed background run fails the script (a bare `wait` would not)
PI0_STEPS=${PI0_STEPS:-$(steps_for checkpoints/pi0_aloha_sim_small/calib/metrics.jsonl)}
FAST_STEPS=${FAST_STEPS:-$(steps_for fast/checkpoints/pi0_fast_aloha_sim_small/calib/metrics.jsonl)}
echo "$BUDGET_S s of training: pi0 $PI0_STEPS steps, pi0-FAST $FAST_STEPS steps"

echo "== 4/5 train both at once, one core each"
( time taskset -c 0 "$pi0" train pi0_aloha_sim_small --dataset demos --steps "$PI0_STEPS" --exp bench \
  --overwrite --log-interval 100 ) > train_pi0.log 2>&1 &
pid=$!
(cd fast && time taskset -c 1 "$pi0" train pi0_fast_aloha_sim_small --dataset ../demos --steps "$FAST_STEPS" \
  --exp bench --overwrite --log-interval 100) > train_fast.log 2>&1
wait "$pid"
pi0_ckpt=checkpoints/pi0_aloha_sim_small/bench/$PI0_STEPS
fast_ckpt=fast/checkpoints/pi0_fast_aloha_sim_small/bench/$FAST_STEPS

echo "== 5/5 benchmarks"
rtc=("$python" "$repo/benchmarks/bench_rtc.py" --checkpoint "$pi0_ckpt" --open-loop-steps 25 --episodes "$RTC_EPISODES")
taskset -c 0 "${rtc[@]}" --latencies 0,100 --out results/rtc_a.json > results/rtc_a.log 2>&1 &
pid=$!
taskset -c 1 "$python" "$repo/benchmarks/bench_fast_vs_pi0.py" --pi0 "$pi0_ckpt" --fast "$fast_ckpt" \
  --episodes "$EVAL_EPISODES" --fast-decode constrained,strict,lenient --heldout heldout --out results/fast_vs_pi0.json > results/fast_vs_pi0.md 2> results/fast_vs_pi0.log
taskset -c 1 "${rtc[@]}" --latencies 200,300 --out results/rtc_b.json > results/rtc_b.log 2>&1
wait "$pid"
"$python" "$repo/benchmarks/bench_rtc.py" --merge results/rtc_a.json results/rtc_b.json --out results/rtc.json \
  > results/rtc.md
cat results/fast_vs_pi0.md results/rtc.md
