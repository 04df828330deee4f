#!/usr/bin/env bash
# The GPU check: everything that needs CUDA, in one run of at most ~8 minutes on a GPU machine.
#
#   bash benchmarks/gpu_check.sh            on a GPU machine (from the working tree's root, .whl/ carried)
#   bash benchmarks/gpu_check.sh --smoke    anywhere: the same steps, tiny, on the CPU (tests/test_gpu_check.py)
#
# Steps, each under its own timeout, logged to "$OUT" (a temporary folder when OUT is unset):
#   install   the wheels ../shared/gpu/prepare.sh put in .whl/ (GYMLAB_CHECK_NO_INSTALL=1 skips it)
#   cuda      the cuda-marked tests
#   suite     the not-slow suite with CUDA present (every non-cuda test pins itself to the CPU)
#   cli       train / resume / eval on --device cuda for DQN, REINFORCE and tabular Q, and DQN's
#             deterministic mode beside the default (its cost)
#   seqgan    SeqGAN's phases at the paper's shapes (benchmarks/seqgan_phases.py)
#   scoring   D's scoring of the rollouts through tables against convolutions (benchmarks/seqgan_scoring.py)
#   update    DQN's gradient step on the Nature CNN: its floor, the default (compile=auto: the CUDA graph)
#             and eager, side by side (benchmarks/dqn_update.py)
#   atari     DQN on Pong against SB3, RL Zoo's settings, gymlab's default (compile=auto: the CUDA graph), then 16 envs
#   fast      the wall-clock Pong preset (configs/dqn/PongNoFrameskip-v4-fast.yaml) on the budget that fits:
#             env steps/s, and the final greedy score (gpu_util.csv covers it)
# summary.txt gets one line per step as it ends (name, exit code, seconds, test counts), so a run
# cut short still says what it did; gpu_util.csv samples GPU utilisation once a second.
set -u
smoke=0
[[ ${1:-} == --smoke ]] && smoke=1
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
log=$OUT/gpu_check.log
summary=$OUT/summary.txt
: >"$log"
: >"$summary"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
failed=0

note() { echo "$*" | tee -a "$summary"; }

# step NAME LIMIT_S COMMAND...: run it under a timeout, log its output, add its line to the summary.
step() {
  local name=$1 limit=$2 start rc counts=""
  shift 2
  start=$(date +%s)
  echo "=== $name (limit ${limit}s, $(date -u +%T)): $*" >>"$log"
  timeout -k 10 "$limit" "$@" > >(tee "$OUT/.step" >>"$log") 2>&1
  rc=$?
  sleep 0.2  # the tee behind the process substitution catches up
  if grep -qE '(PASSED|FAILED|ERROR|SKIPPED) ' "$OUT/.step"; then
    counts=$(awk '/ PASSED /{p++} / FAILED /{f++} / ERROR /{e++} / SKIPPED /{s++}
      END {printf "passed %d, failed %d, errors %d, skipped %d", p, f, e, s}' "$OUT/.step")
  fi
  rm -f "$OUT/.step"
  [[ $rc == 0 ]] || failed=1
  note "$name rc=$rc $(($(date +%s) - start))s${counts:+ ($counts)}$([[ $rc == 124 || $rc == 137 ]] && echo ' TIMED OUT')"
}

skip() { note "$1 skipped: $2"; }

if [[ $smoke == 0 && ${GYMLAB_CHECK_NO_INSTALL:-0} != 1 ]]; then
  step install 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$root"/.whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # From the repo root `import gymlab` would find the source folder, whose agents/, envs/ and replay/
  # only the installed wheel maps under gymlab.*: run from a copy of what the steps read.
  rm -rf /tmp/w && mkdir -p /tmp/w && cp -r "$root"/tests "$root"/benchmarks "$root"/configs "$root"/pyproject.toml /tmp/w
  cd /tmp/w || exit 2
else
  cd "$root" || exit 2
fi

# One interpreter for the probes (each import of torch is seconds): whether CUDA works, the versions, and
# which optional packages are installed (found, not imported).
probe=$("$py" -c 'import importlib.util as u, sys, torch, gymnasium
print(int(torch.cuda.is_available()), *(int(u.find_spec(m) is not None) for m in sys.argv[1:]))
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gymnasium", gymnasium.__version__)' pytest_timeout xdist ale_py stable_baselines3 2>>"$log")
read -r cuda has_timeout has_xdist has_ale has_sb3 <<<"${probe%%$'\n'*}"
cuda=${cuda:-0}
[[ $cuda == 1 ]] || smoke=1
{
  echo "host $(hostname), $(nproc) cores, $(uptime)"
  echo "${probe#*$'\n'}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} >>"$summary" 2>&1
note "mode: $([[ $smoke == 1 ]] && echo 'smoke (CPU, tiny budgets)' || echo 'GPU')"

if [[ $smoke == 1 ]]; then
  device=cpu dqn_steps=600 resume_steps=900 rf_steps=600 tq_steps=2000
  pytest_suite=(tests/test_devices.py)
  update_args=(--atari --paths floor,floor_target,auto,eager --repeats 2 --steps 2)
  atari_args=(--steps 600 --seeds 1 --eval-episodes 1 --only gymlab)
  # 8 gradient steps of the Nature CNN: the preset's whole path at a CPU's pace
  fast_args=(--steps 640 hparams.learning_starts=576 hparams.buffer_size=4096 eval_episodes=1 checkpoint_every=0)
  seqgan_args=(--repeats 1 --budget-s 20 --phases d_round_1ep)  # D's step: most of SeqGAN's time
  scoring_args=(--shapes test --counts 256 4096 --repeats 1)
else
  device=cuda dqn_steps=3000 resume_steps=5000 rf_steps=3000 tq_steps=20000
  pytest_suite=(-m "not slow" tests)
  update_args=(--atari --paths floor,floor_target,auto,eager --repeats 6 --steps 50)
  atari_args=(--steps 12000 --seeds 1 --eval-episodes 1)
  fast_args=(--steps 400000 eval_episodes=3 checkpoint_every=0)
  seqgan_args=(--paper --repeats 2 --budget-s 75)
  scoring_args=(--repeats 5)
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$OUT/gpu_util.csv" 2>&1 &
  util_pid=$!
fi

timeout_opt=()
[[ ${has_timeout:-0} == 1 ]] && timeout_opt=(--timeout 120)
workers=()  # xdist when it has two workers or more: one worker only adds its start-up
[[ ${has_xdist:-0} == 1 ]] && (($(nproc) > 3)) && workers=(-n "$(($(nproc) - 2))")

# Each failure is written to failures.txt as it happens (a step cut short by its timeout still says why).
export GYMLAB_FAILURE_LOG=$OUT/failures.txt
: >"$GYMLAB_FAILURE_LOG"
live=(-p no:cacheprovider -p tests.live_failures)
if [[ $smoke == 1 && $cuda == 0 ]]; then
  step cuda 60 "$py" -m pytest "${live[@]}" -m cuda -q -rs tests/test_devices.py
else
  step cuda 150 "$py" -m pytest "${live[@]}" "${timeout_opt[@]}" -m cuda -v -rA tests
fi
step suite 300 "$py" -m pytest "${live[@]}" "${workers[@]}" "${timeout_opt[@]}" -v -rfE "${pytest_suite[@]}"

cli_runs() {
  local g=("$py" -m gymlab) d=$OUT/cli
  rm -rf "$d" && mkdir -p "$d" || return 1
  "${g[@]}" train dqn CartPole-v1 --steps "$dqn_steps" --device "$device" --run-dir "$d/dqn" eval_every=0 &&
    "${g[@]}" train --resume "$d/dqn" --steps "$resume_steps" &&
    "${g[@]}" eval "$d/dqn" --episodes 3 --device "$device" &&
    "${g[@]}" train dqn CartPole-v1 --steps "$dqn_steps" --device "$device" --run-dir "$d/dqn-det" eval_every=0 \
      deterministic=true &&
    "${g[@]}" train reinforce CartPole-v1 --steps "$rf_steps" --device "$device" --run-dir "$d/rf" eval_every=0 &&
    "${g[@]}" eval "$d/rf" --episodes 3 &&
    "${g[@]}" train tabular_q FrozenLake-v1 --steps "$tq_steps" --device "$device" --run-dir "$d/tq" &&
    "${g[@]}" eval "$d/tq" --json
}
export -f cli_runs
export py device dqn_steps resume_steps rf_steps tq_steps OUT
step cli 90 bash -c cli_runs

step seqgan 100 "$py" benchmarks/seqgan_phases.py --device "$device" "${seqgan_args[@]}"
# D's step replayed from one CUDA graph (SeqGAN's compile=cuda_graph), at the paper's shapes, beside the eager D round above
if [[ $cuda == 1 ]]; then
  step seqgan_graph 60 "$py" benchmarks/seqgan_phases.py --device cuda --paper --compile cuda_graph \
    --phases d_negatives,d_round_1ep --repeats 3 --budget-s 40
else
  skip seqgan_graph "needs CUDA (a CUDA graph)"
fi

step scoring 60 "$py" benchmarks/seqgan_scoring.py --device "$device" "${scoring_args[@]}"

step update 90 "$py" benchmarks/dqn_update.py --device "$device" "${update_args[@]}"

if [[ ${has_ale:-0} == 1 && ${has_sb3:-0} == 1 ]]; then
  atari_runs() {
    local args
    read -ra args <<<"$atari_args_text"
    "$py" benchmarks/dqn_vs_sb3.py --atari --device "$device" "${args[@]}" &&
      if [[ $smoke == 0 ]]; then
        "$py" benchmarks/dqn_vs_sb3.py --atari --device "$device" --only gymlab --num-envs 16 \
          "${args[@]}"
      fi
  }
  export -f atari_runs
  export smoke
  export atari_args_text="${atari_args[*]}"
  step atari 100 bash -c atari_runs
else
  skip atari "ale-py or stable-baselines3 is not installed"
fi

if [[ ${has_ale:-0} == 1 ]]; then
  step fast 200 "$py" -m gymlab train dqn PongNoFrameskip-v4 --config configs/dqn/PongNoFrameskip-v4-fast.yaml \
    --device "$device" --run-dir "$OUT/fast" "${fast_args[@]}"
else
  skip fast "ale-py is not installed"
fi


[[ -n ${util_pid:-} ]] && kill "$util_pid" 2>/dev/null
note "done: $([[ $failed == 0 ]] && echo 'every step passed' || echo 'some step failed'); log $log"
exit "$failed"
