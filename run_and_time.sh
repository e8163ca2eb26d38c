#!/usr/bin/env bash
# The MLPerf entry point. Source a config_<SYSTEM>.sh first (it exports the settings), then run this script:
# it checks the settings, runs NEXP experiments (a fresh seed each; SEED fixes the first, experiment i uses
# SEED+i), drops the page cache before each when permitted (logged as cache_clear either way), checks every
# new log with the official compliance checker and prints the time-to-train summary.
# DRY_RUN=1 prints the exact launch command of each experiment instead of running it.
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || exit 1

PYTHON=${PYTHON:-python3}
: "${DGXSYSTEM:?set DGXSYSTEM: source a config_<SYSTEM>.sh first (see README)}"
NEXP=${NEXP:-5}
DGXNGPU=${DGXNGPU:-1}
DGXNNODES=${DGXNNODES:-1}
LOGDIR=${LOGDIR:-./results}
export LOGDIR
RESULTS="$LOGDIR/$DGXSYSTEM/resnet"

if [[ -f "config_${DGXSYSTEM}.sh" ]]; then
    "$PYTHON" -m resnet.settings check-config "config_${DGXSYSTEM}.sh" || exit 1
fi
flags=$("$PYTHON" -m resnet.settings flags) || exit 1
mapfile -t FLAGS <<<"$flags"

launcher=(torchrun --nproc_per_node="$DGXNGPU" --nnodes="$DGXNNODES")
if ((DGXNNODES > 1)); then
    : "${MASTER_ADDR:?multi-node runs need MASTER_ADDR (run.sub derives it from SLURM)}"
    launcher+=(--node_rank="${SLURM_NODEID:-${NODE_RANK:-0}}" --rdzv_backend=c10d
               --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="${SLURM_JOB_ID:-mlperf-resnet}")
else
    launcher+=(--standalone)
fi
if [[ "${BIND_CPU:-0}" == 1 ]]; then
    # One NUMA-local slice of cores per rank: torchrun's own binding, cores split evenly across local ranks.
    launcher+=(--numa-binding=node)
fi

next_log() {  # the next free result_N.txt: logs are never overwritten
    local n=0
    while [[ -e "$RESULTS/result_$n.txt" ]]; do n=$((n + 1)); done
    echo "$RESULTS/result_$n.txt"
}

mkdir -p "$RESULTS" || { echo "run_and_time.sh: error: LOGDIR $LOGDIR is not writable; set LOGDIR" >&2; exit 1; }
new_logs=()
failed=0
for ((i = 0; i < NEXP; i++)); do
    if [[ -n "${SEED:-}" ]]; then seed=$((SEED + i)); else seed=$("$PYTHON" -c 'import random; print(random.SystemRandom().randrange(2**31))'); fi
    log=$(next_log)
    # A launcher that dropped the host's cache itself (run_with_docker.sh, run.sub) says so in CACHE_CLEARED.
    cleared=${CACHE_CLEARED:-0}
    if [[ -z "${CACHE_CLEARED:-}" && "${DRY_RUN:-0}" != 1 ]] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        cleared=1
    fi
    cmd=("${launcher[@]}" -m resnet.train "${FLAGS[@]}" --seed "$seed" --log-file "$log" --cache-cleared "$cleared")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        continue
    fi
    echo "=== experiment $((i + 1))/$NEXP: seed $seed -> $log (page cache dropped: $cleared)" >&2
    start=$(date +%s)
    "${cmd[@]}"
    rc=$?
    echo "=== experiment $((i + 1))/$NEXP: seed $seed exit $rc after $(($(date +%s) - start)) s" >&2
    [[ -s "$log" ]] && new_logs+=("$log")
    if ((rc != 0)); then failed=$((failed + 1)); fi
done
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0

echo "=== $NEXP experiments, $failed did not reach the target or failed (MLPerf tolerates one of five)" >&2
checked=0
if ((${#new_logs[@]})); then
    "$PYTHON" -m compliance.check "${new_logs[@]}" || checked=1
fi
"$PYTHON" -m compliance.summarize "$RESULTS"
summary=$?
if ((failed > 1 || checked != 0 || summary != 0)); then exit 1; fi
exit 0
