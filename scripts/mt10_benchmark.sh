#!/usr/bin/env bash
# The Meta-World MT10 table of docs/metaworld.md, end to end on a 2-core CPU (about 1.6 h; one core):
#   1. record EPISODES_PER_TASK scripted demonstrations of each MT10 task (scenes from seed 0; failed ones are
#      not kept) into one dataset whose episodes carry their task's instruction;
#   2. norm stats over 20-step chunks (pi0_metaworld_small);
#   3. train pi0_metaworld_small for STEPS steps;
#   4. closed loop on unseen scenes (seed 1000 on): every MT10 task with its own instruction, then the language
#      ablation: the same-layout pairs (drawer open/close, window open/close) each asked with the other's
#      instruction, and all ten asked with the next task's (--prompt-from shifted).
# Sizes come from the environment (defaults: the run in docs/metaworld.md). Results land in $WORK/results/.
set -euo pipefail

EPISODES_PER_TASK=${EPISODES_PER_TASK:-20}
STEPS=${STEPS:-3000}
EVAL_EPISODES=${EVAL_EPISODES:-10}
CORE=${CORE:-0}
WORK=${WORK:-runs/mt10}

repo=$(cd "$(dirname "$0")/.." && pwd)
pi0=${PI0:-$repo/.venv/bin/pi0}
mkdir -p "$WORK/results"
cd "$WORK"
export HF_HUB_OFFLINE=1 HF_LEROBOT_HOME="$PWD/lerobot-home" MUJOCO_GL="${MUJOCO_GL:-egl}"
run() { taskset -c "$CORE" "$pi0" "$@"; }

echo "== 1/4 record $EPISODES_PER_TASK scripted demonstrations of each MT10 task"
run record metaworld --scripted --tasks mt10 --episodes-per-task "$EPISODES_PER_TASK" --out demos --overwrite
echo "== 2/4 norm stats"
run norm-stats metaworld --dataset demos --preset pi0_metaworld_small --out assets
echo "== 3/4 train $STEPS steps"
run train pi0_metaworld_small --dataset demos --steps "$STEPS" --exp mt10 --overwrite --log-interval 100
ckpt=checkpoints/pi0_metaworld_small/mt10/$STEPS
echo "== 4/4 closed loop, then the language ablation"
evaluate() { run eval metaworld --checkpoint "$ckpt" --episodes-per-task "$EVAL_EPISODES" --no-videos "$@"; }
evaluate --tasks mt10 --out results/mt10
evaluate --tasks drawer-open,drawer-close --prompt-from shifted --out results/ablation_drawer
evaluate --tasks window-open,window-close --prompt-from shifted --out results/ablation_window
evaluate --tasks mt10 --prompt-from shifted --out results/ablation_mt10
