#!/usr/bin/env bash
# Co-training against specialists (docs/metaworld.md, "Co-training"), on a 2-core CPU, one core per job:
#   1. demonstrations: ALOHA transfer-cube (scripted, 50 episodes) and the MT10 ones of scripts/mt10_benchmark.sh
#      (reused from $MT10_DEMOS; run that script first);
#   2. norm stats of both robots from one mixture file (one asset per robot);
#   3. three pi0_metaworld_small runs, all through the mixture path (same model, same loss mask):
#      the ALOHA specialist (STEPS steps), the MT10 specialist (STEPS steps; scripts/mt10_benchmark.sh trains the
#      same run), and one policy on both, 1:1, for 2 x STEPS steps: the two specialists' total training time;
#   4. closed loop: ALOHA transfer-cube on 20 unseen scenes (seeds 1000-1019, those of the pi0-FAST vs pi0 table),
#      MT10 on 10 unseen scenes per task (seeds 1000-1009).
# The two trainings of step 3 run side by side (one core each). Results land in $WORK/results/.
set -euo pipefail

STEPS=${STEPS:-3000}
ALOHA_EPISODES=${ALOHA_EPISODES:-50}
WORK=${WORK:-runs/cotrain}
MT10_DEMOS=${MT10_DEMOS:-runs/mt10/demos}

repo=$(cd "$(dirname "$0")/.." && pwd)
pi0=${PI0:-$repo/.venv/bin/pi0}
MT10_DEMOS=$(cd "$MT10_DEMOS" && pwd)
mkdir -p "$WORK/results"
cd "$WORK"
export HF_HUB_OFFLINE=1 HF_LEROBOT_HOME="$PWD/lerobot-home" MUJOCO_GL="${MUJOCO_GL:-egl}"
on() { local core=$1; shift; taskset -c "$core" "$pi0" "$@"; }

# One JSON of the three runs (benchmarks/results/cotrain_small.json): training time and loss of each, success of
# each on each robot it can serve, and the held-out ALOHA action error.
summarize() {
  "$repo/.venv/bin/python" - "$STEPS" > results/cotrain_small.json <<'PY'
import json, re, sys
from pathlib import Path
steps = int(sys.argv[1])
runs = {"aloha": ("ALOHA specialist", steps), "mt10": ("MT10 specialist", steps), "both": ("co-trained", 2 * steps)}
def report(name):
    path = Path("results") / name / "report.json"
    return json.loads(path.read_text()) if path.exists() else None
out = {"preset": "pi0_metaworld_small", "steps_per_specialist": steps, "runs": {}}
for exp, (label, n) in runs.items():
    log = Path(f"train_{exp}.log").read_text()
    loss = re.search(r"loss ([\d.]+) -> ([\d.]+)", log)
    wall = re.search(r"(\d+)s$", [line for line in log.splitlines() if "steps/s" in line][-1].strip())
    row = {"label": label, "steps": n, "train_seconds": float(wall[1]) if wall else None,
           "loss_first_last": [float(loss[1]), float(loss[2])] if loss else None}
    for robot, name in (("aloha_sim", f"{exp}_aloha"), ("metaworld", f"{exp}_mt10")):
        r = report(name)
        if r is not None:
            row[robot] = {k: r[k] for k in ("episodes", "successes", "success_rate", "success_rate_ci95",
                                            "mean_return")}
            if "per_task" in r:
                row[robot]["per_task"] = {t: v["successes"] for t, v in r["per_task"].items()}
    held = Path("results") / f"{exp}_aloha_heldout" / "offline_report.json"
    if held.exists():
        row["aloha_heldout"] = {k: v for k, v in json.loads(held.read_text()).items()
                                if k in ("mae", "rmse", "hold_position_mae", "frames_compared")}
    out["runs"][exp] = row
print(json.dumps(out, indent=1))
PY
  echo "wrote $PWD/results/cotrain_small.json"
}

echo "== 1/4 record $ALOHA_EPISODES scripted ALOHA transfer-cube demonstrations"
on 0 record aloha_sim --scripted --episodes "$ALOHA_EPISODES" --out aloha-demos --overwrite
cat > mix_aloha.toml <<EOF
[[dataset]]
path = "aloha-demos"
embodiment = "aloha_sim"
weight = 1
EOF
cat > mix_mt10.toml <<EOF
[[dataset]]
path = "$MT10_DEMOS"
embodiment = "metaworld"
weight = 1
EOF
cat mix_aloha.toml mix_mt10.toml > mix_both.toml

echo "== 2/4 norm stats of both robots"
on 0 norm-stats --mixture mix_both.toml --preset pi0_metaworld_small --out assets

echo "== 3/4 train: the specialists ($STEPS steps each) and the co-trained policy ($((2 * STEPS)) steps)"
train() { local core=$1 exp=$2 mix=$3 steps=$4
  on "$core" train pi0_metaworld_small --mixture "$mix" --steps "$steps" --exp "$exp" --overwrite --log-interval 100 \
    > "train_$exp.log" 2>&1; }
train 1 aloha mix_aloha.toml "$STEPS" &
train 0 both mix_both.toml $((2 * STEPS))
wait
train 1 mt10 mix_mt10.toml "$STEPS"

echo "== 4/4 closed loop, then action error on 10 held-out ALOHA demonstrations (scenes 500-509)"
on 0 record aloha_sim --scripted --episodes 10 --seed 500 --out heldout --overwrite
ckpt() { echo "checkpoints/pi0_metaworld_small/$1/$2"; }
on 0 eval aloha_sim --checkpoint "$(ckpt aloha "$STEPS")" --episodes 20 --seed 1000 --no-videos --out results/aloha_aloha &
on 1 eval aloha_sim --checkpoint "$(ckpt both $((2 * STEPS)))" --episodes 20 --seed 1000 --no-videos --out results/both_aloha
wait
on 0 eval metaworld --checkpoint "$(ckpt mt10 "$STEPS")" --tasks mt10 --episodes-per-task 10 --no-videos \
  --out results/mt10_mt10 &
on 1 eval metaworld --checkpoint "$(ckpt both $((2 * STEPS)))" --tasks mt10 --episodes-per-task 10 --no-videos \
  --out results/both_mt10
wait
on 0 eval aloha_sim --dataset heldout --checkpoint "$(ckpt aloha "$STEPS")" --stride 5 --out results/aloha_aloha_heldout &
on 1 eval aloha_sim --dataset heldout --checkpoint "$(ckpt both $((2 * STEPS)))" --stride 5 \
  --out results/both_aloha_heldout
wait
summarize
