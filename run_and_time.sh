#!/usr/bin/env bash
# The MLPerf entry point. Source a config_<SYSTEM>.sh first (it exports the settings), then run this script:
# it checks the settings, runs NEXP experiments (a fresh seed each; SEED fixes the first, experiment i uses
# SEED+i), drops the page cache before each when permitted (logged as cache_clear either way), checks every
# new log with the official compliance checker and prints the time-to-train summary.
#
# DRY_RUN=1 prints the exact launch command of each experiment instead of running it, and creates nothing (it
# only warns when DATADIR is not on this machine: a login node previews a GPU node's command).
# Per experiment it prints "exit N (meaning)" with the trainer's own exit status (torchrun turns every failure
# into 1): 0 reached the target, 1 error, 2 target not reached, 3 non-finite loss, 4 stopped by a signal.
# Exit status: with NEXP >= 5 (a submission set), 0 when the summary is valid (at most one of five missed);
# with fewer (a smoke run), 0 when every experiment reached the target and every new log passed the checker.
# SIGTERM/SIGINT/SIGHUP are forwarded to torchrun, which passes them to the trainer: it checkpoints (when
# CHECKPOINT_DIR is set), logs run_stop aborted and exits; this script then stops without further experiments.
# Two or more nodes: one copy per node with DGXNNODES, MASTER_ADDR[:MASTER_PORT] and the node's rank in
# SLURM_NODEID or NODE_RANK; node 0 checks the logs and prints the summary (LOGDIR must be shared).
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || exit 1

die() { echo "run_and_time.sh: error: $*" >&2; exit 1; }
warn() { echo "run_and_time.sh: warning: $*" >&2; }

# Every value that reaches shell arithmetic or a path is checked first: `NEXP='$(cmd)'` must not run cmd.
whole() {  # whole NAME MIN MAX_DIGITS: $NAME is a whole number >= MIN
    local value=${!1}
    if [[ ! "$value" =~ ^[0-9]{1,$3}$ ]] || ((10#$value < $2)); then
        die "$1=$(printf '%q' "$value") is not a whole number >= $2; fix or unset $1"
    fi
    printf -v "$1" '%d' "$((10#$value))"
}
zero_or_one() {
    [[ -z "${!1:-}" || "${!1}" =~ ^[01]$ ]] || die "$1=$(printf '%q' "${!1}") is not 0 or 1; set $1=0 or $1=1"
}

PYTHON=${PYTHON:-python3}
[[ -n "${DGXSYSTEM:-}" ]] || die "DGXSYSTEM is not set; source a config_<SYSTEM>.sh first (see README)"
[[ "$DGXSYSTEM" =~ ^[A-Za-z0-9_.-]+$ ]] ||
    die "DGXSYSTEM=$(printf '%q' "$DGXSYSTEM") is no system name (letters, digits, _ . -); fix the config"
NEXP=${NEXP:-5} DGXNGPU=${DGXNGPU:-1} DGXNNODES=${DGXNNODES:-1}
whole NEXP 1 4
whole DGXNGPU 1 4
whole DGXNNODES 1 5
if [[ -n "${SEED:-}" ]]; then whole SEED 0 10; fi
node_rank=${SLURM_NODEID:-${NODE_RANK:-0}}
if ((DGXNNODES > 1)); then
    if [[ -n "${SLURM_NODEID:-}" ]]; then whole SLURM_NODEID 0 5; else NODE_RANK=${NODE_RANK:-0}; whole NODE_RANK 0 5; fi
    node_rank=${SLURM_NODEID:-$NODE_RANK}
    ((node_rank < DGXNNODES)) || die "node rank $node_rank is not below DGXNNODES=$DGXNNODES; fix NODE_RANK"
    [[ -n "${MASTER_ADDR:-}" ]] || die "DGXNNODES=$DGXNNODES needs MASTER_ADDR (node 0's address; run.sub sets it)"
    MASTER_PORT=${MASTER_PORT:-29500}
    whole MASTER_PORT 1 5
else
    node_rank=0
fi
zero_or_one DRY_RUN
zero_or_one BIND_CPU
zero_or_one CACHE_CLEARED
dry_run=${DRY_RUN:-0}
LOGDIR=${LOGDIR:-./results}
export LOGDIR
RESULTS="$LOGDIR/$DGXSYSTEM/resnet"

# The interpreter must hold the benchmark's dependencies: say which one is missing in one line.
probe='import importlib.util as u, sys
missing = [m for m in ("torch", "mlperf_logging", *sys.argv[1:]) if u.find_spec(m) is None]
sys.exit(f"no module named {missing[0]!r}" if missing else 0)'
if ! problem=$("$PYTHON" -c "$probe" "$([[ "${LOADER:-ffcv}" == ffcv ]] && echo ffcv || echo torchvision)" 2>&1 &&
               "$PYTHON" -c 'import resnet.launch, compliance' 2>&1); then
    die "PYTHON=$PYTHON cannot run the benchmark (${problem##*$'\n'}); set PYTHON to the environment's python" \
        "(pip install -e . there) or activate it"
fi

# Typos: in the config file actually sourced (the configs export CONFIG_FILE) and in the environment.
if [[ -n "${CONFIG_FILE:-}" ]]; then
    "$PYTHON" -m resnet.launch check-config "$CONFIG_FILE" || exit 1
fi
"$PYTHON" -m resnet.launch check-env || exit 1
if [[ "$dry_run" == 1 && ! -d "${DATADIR:-}" ]]; then
    warn "DATADIR=${DATADIR:-} is not a folder on this machine; the commands below are for the machine that has it"
fi
# NUL-separated: a newline inside a setting's value stays inside that value.
mapfile -d '' FLAGS < <("$PYTHON" -m resnet.launch flags) && wait "$!" || exit 1

launcher=(torchrun --nproc_per_node="$DGXNGPU" --nnodes="$DGXNNODES")
if ((DGXNNODES > 1)); then
    launcher+=(--node_rank="$node_rank" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"
               --rdzv_id="${SLURM_JOB_ID:-mlperf-resnet}")
else
    launcher+=(--standalone)
fi
if [[ "${BIND_CPU:-0}" == 1 ]]; then
    # Each local rank gets its own share of the cores of its GPU's NUMA node (`node` would give every rank all
    # of the node's cores). PyTorch 2.6 (NGC 25.01) has no --numa-binding: run unbound there, and say so.
    if "$PYTHON" -c 'from torch.numa.binding import AffinityMode; AffinityMode("exclusive")' 2>/dev/null; then
        launcher+=(--numa-binding=exclusive)
    else
        warn "BIND_CPU=1 ignored: this PyTorch's torchrun has no --numa-binding=exclusive (NGC 25.12 has it)"
    fi
fi

next_log() {  # the next free result_N.txt: logs are never overwritten
    local n=0
    while [[ -e "$RESULTS/result_$n.txt" ]]; do n=$((n + 1)); done
    echo "$RESULTS/result_$n.txt"
}

meaning() {  # the trainer's documented exit statuses
    case "$1" in
        0) echo "reached the target" ;;
        1) echo "error" ;;
        2) echo "target not reached" ;;
        3) echo "non-finite loss" ;;
        4) echo "stopped by a signal" ;;
        -*) echo "killed by signal ${1#-}" ;;
        *) echo "unexpected exit status" ;;
    esac
}

# torchrun's console without its own stack trace for a failed worker (ChildFailedError) or a forwarded signal
# (SignalException); the first failed worker's exit status from its failure table goes into the file $1.
# Every other traceback (the trainer's own errors) passes through unchanged.
quiet_torchrun() {
    awk -v status_file="$1" '
        !held && /^Traceback \(most recent call last\):$/ { held = 1; n = 0; lines[n++] = $0; next }
        held {
            lines[n++] = $0
            if ($0 !~ /^[^ \t]/) next                       # still inside the traceback
            held = 0
            if ($0 ~ /^torch\.distributed\.elastic\..*(ChildFailedError|SignalException)/) {
                table = ($0 ~ /ChildFailedError/); bars = 0; next
            }
            for (i = 0; i < n; i++) print lines[i]
            fflush(); next
        }
        table {
            if (!found && $0 ~ /^ *exitcode *: *-?[0-9]+/) {
                sub(/^ *exitcode *: */, ""); split($0, word, " ")
                print word[1] > status_file; close(status_file); found = 1
            }
            if ($0 ~ /^=+$/ && ++bars == 2) table = 0
            next
        }
        { print; fflush() }
        END { for (i = 0; held && i < n; i++) print lines[i] }'
}

if [[ "$dry_run" != 1 ]]; then
    command -v torchrun >/dev/null || die "torchrun is not on PATH (it comes with PyTorch); activate the" \
        "environment of PYTHON=$PYTHON or add its bin folder to PATH"
    mkdir -p "$RESULTS" 2>/dev/null || die "LOGDIR $LOGDIR is not writable; set LOGDIR"
    work=$(mktemp -d) || die "cannot create a temporary folder; check TMPDIR"
    trap 'rm -rf "$work"' EXIT
fi

# A signal to this script goes to the running experiment's process group (torchrun; it stops the trainer).
stopped_by="" child=""
# shellcheck disable=SC2329  # called by the traps below
forward() {
    stopped_by=$1
    echo "run_and_time.sh: SIG$1: passing it to the running experiment (checkpoint, run_stop aborted);" \
         "no further experiments" >&2
    if [[ -n "$child" ]]; then kill -s "$1" -- "-$child" 2>/dev/null; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

new_logs=()
failed=0 errors=0 done_exps=0
for ((i = 0; i < NEXP; i++)); do
    [[ -z "$stopped_by" ]] || break
    if [[ -n "${SEED:-}" ]]; then seed=$((SEED + i)); else seed=$("$PYTHON" -c 'import random; print(random.SystemRandom().randrange(2**31))'); fi
    log=$(next_log)
    # A launcher that dropped the host's cache itself (run_with_docker.sh, run.sub) says so in CACHE_CLEARED.
    cleared=${CACHE_CLEARED:-0}
    if [[ -z "${CACHE_CLEARED:-}" && "$dry_run" != 1 ]] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        cleared=1
    fi
    cmd=("${launcher[@]}" -m resnet.train "${FLAGS[@]}" --seed "$seed" --log-file "$log" --cache-cleared "$cleared")
    if [[ "$dry_run" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        continue
    fi
    echo "=== experiment $((i + 1))/$NEXP: seed $seed -> $log (page cache dropped: $cleared)" >&2
    start=$(date +%s)
    rm -f "$work/status" "$work/stderr"
    mkfifo "$work/stderr" || die "cannot create a pipe in $work"
    quiet_torchrun "$work/status" <"$work/stderr" >&2 &
    filter=$!
    # Its own process group (set -m), so that a terminal's Ctrl-C reaches it only through forward().
    set -m
    "${cmd[@]}" </dev/null 2>"$work/stderr" &
    child=$!
    set +m
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done   # a forwarded signal interrupts wait
    wait "$filter"
    child=""
    status=$rc
    if [[ -s "$work/status" ]]; then
        status=$(<"$work/status")
    elif [[ -n "$stopped_by" && $rc != 0 ]]; then
        status=4                        # torchrun itself was signalled and reports 1; its trainer stopped
    fi
    echo "=== experiment $((i + 1))/$NEXP: seed $seed exit $status ($(meaning "$status"))" \
         "after $(($(date +%s) - start)) s" >&2
    done_exps=$((done_exps + 1))
    [[ -s "$log" ]] && new_logs+=("$log")
    if [[ "$status" != 0 ]]; then failed=$((failed + 1)); fi
    if [[ "$status" == 1 || "$status" == -* ]]; then errors=$((errors + 1)); fi
done
[[ "$dry_run" == 1 ]] && exit 0

if [[ -n "$stopped_by" ]]; then
    echo "run_and_time.sh: stopped by SIG$stopped_by after $done_exps of $NEXP experiments; the interrupted" \
         "run is logged as aborted${CHECKPOINT_DIR:+ and its checkpoint is in $CHECKPOINT_DIR}" >&2
    exit $((128 + $(kill -l "$stopped_by")))
fi
if ((node_rank > 0)); then
    # The logs are written by global rank 0 into the shared LOGDIR; node 0 checks them and prints the summary.
    echo "=== node $node_rank: $NEXP experiments, $errors ended in an error here (node 0 reports the results)" >&2
    ((errors == 0)) || exit 1
    exit 0
fi

echo "=== $NEXP experiments, $failed did not reach the target or failed (MLPerf tolerates one of five)" >&2
checked=0
if ((${#new_logs[@]})); then
    "$PYTHON" -m compliance.check "${new_logs[@]}" || checked=1
fi
# At the target the runs trained for: another than MLPerf's 0.759 is summarised as "not a submission score".
"$PYTHON" -m compliance.summarize ${TARGET_ACCURACY:+--target "$TARGET_ACCURACY"} "$RESULTS"
summary=$?
if ((NEXP < 5)); then
    # A smoke run: it worked when every run reached the target and passed the checker, though the summary
    # above (rightly) says that a submission needs five runs.
    if ((failed == 0 && checked == 0)); then
        echo "=== smoke run passed: $NEXP of $NEXP reached the target and passed the checker (a submission needs 5)" >&2
        exit 0
    fi
    exit 1
fi
if ((failed > 1 || checked != 0 || summary != 0)); then exit 1; fi
exit 0
