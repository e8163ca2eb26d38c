#!/usr/bin/env bash
# The MLPerf entry point. Source a config_<SYSTEM>.sh first (it exports the settings), then run this script:
# it checks the settings, runs NEXP experiments (a fresh seed each; SEED fixes the first, experiment i uses
# SEED+i), drops the page cache before each when permitted (logged as cache_clear either way), checks every
# new log with the official compliance checker and prints the time-to-train summary.
#
# Each experiment claims the next free $LOGDIR/$DGXSYSTEM/resnet/result_N.txt itself, atomically (an existing
# file or link, dangling or not, is never touched), so two launches into one LOGDIR never share a log; the
# trainer writes only into that claimed, empty file. The trainer's console lines are shown as they come.
# DRY_RUN=1 prints the exact launch command of each experiment instead of running it, and creates nothing (it
# only warns when DATADIR is not on this machine: a login node previews a GPU node's command).
# Per experiment it prints "exit N (meaning)" with the trainer's own exit status (torchrun turns every failure
# into 1): 0 reached the target, 1 error, 2 target not reached, 3 non-finite loss, 4 stopped by a signal.
# Exit status: with NEXP >= 5 (a submission set), 0 when the summary is valid (at most one of five missed);
# with fewer (a smoke run), 0 when every experiment reached the target and every new log passed the checker.
# SIGTERM/SIGINT/SIGHUP (also a terminal's Ctrl-C to the whole group) are passed to torchrun, which passes them
# to the trainer: it checkpoints (when CHECKPOINT_DIR is set), logs run_stop aborted and exits; this script then
# starts no further experiment and says how to continue (RESUME=auto, the default, continues the checkpoint).
# A shell that started this script with SIGINT ignored (`... &` in a script) leaves Ctrl-C no way in: warned.
# Two or more nodes: one copy per node with DGXNNODES, MASTER_ADDR[:MASTER_PORT] and the node's rank in
# SLURM_NODEID or NODE_RANK; torchrun's static rendezvous puts global rank 0 on node 0, which claims and checks
# the log and prints the summary (LOGDIR must be shared). A node waits RDZV_TIMEOUT_S (300) for the others.
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || exit 1

die() { echo "run_and_time.sh: error: $*" >&2; exit 1; }
warn() { echo "run_and_time.sh: warning: $*" >&2; }

# Signals ignored when bash starts cannot be trapped: a Ctrl-C would then never reach the trainer.
if [[ "$(trap -p INT)" == "trap -- '' SIGINT" ]]; then
    warn "SIGINT is ignored in this shell: Ctrl-C cannot stop the run; start it with set -m or send SIGTERM"
fi
# A signal to this script goes straight to the trainers, torchrun's workers (each in its own session): a
# signal to torchrun would reach them too, but torchrun kills a worker that has not exited 30 s later, and a
# trainer on a loaded machine may need longer to reach its next check, checkpoint and log run_stop. torchrun
# then sees them exit 4 and reports it. A process still starting (a Python importing: a SIGINT would end it with
# a traceback) gets SIGTERM instead, which ends it silently before it has opened a log: a trainer that has not
# installed its handler yet, or torchrun before it has started its workers (its group).
# Trapped from the start: a signal before or between experiments stops the set as well.
stopped_by="" child=""
catches_hup() {  # PID has a handler for SIGHUP (bit 0 of SigCgt): resnet.train's, installed as it starts
    local mask     # (grep, not bash's read: inside the SIGINT trap, read returns at once without reading)
    mask=$(grep -m 1 '^SigCgt:' "/proc/$1/status" 2>/dev/null) || return 1
    mask=${mask##*[[:space:]]}
    [[ "$mask" =~ ^[0-9a-fA-F]+$ ]] && (((16#$mask & 1) == 1))
}
pass_on() {
    local workers worker
    workers=$(pgrep -P "$child" 2>/dev/null)
    for worker in $workers; do
        if catches_hup "$worker"; then
            kill -s "$1" -- "-$worker" 2>/dev/null || kill -s "$1" "$worker" 2>/dev/null
        else
            kill -s TERM "$worker" 2>/dev/null
        fi
    done
    if [[ -z "$workers" ]]; then kill -s TERM -- "-$child" 2>/dev/null; fi
}
# shellcheck disable=SC2329  # called by the traps below
forward() {
    [[ -z "$stopped_by" ]] || return 0
    stopped_by=$1
    echo "run_and_time.sh: SIG$1: passing it to the running experiment (checkpoint, run_stop aborted);" \
         "no further experiments" >&2
    if [[ -n "$child" ]]; then pass_on "$1"; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

# Every value that reaches shell arithmetic or a path is checked first: `NEXP='$(cmd)'` must not run cmd.
whole() {  # whole NAME MIN MAX_DIGITS [MAX]: $NAME is a whole number >= MIN (and <= MAX)
    local value=${!1}
    if [[ ! "$value" =~ ^[0-9]{1,$3}$ ]] || ((10#$value < $2)) || { (($# > 3)) && ((10#$value > $4)); }; then
        die "$1=$(printf '%q' "$value") is not a whole number >= $2${4:+ and <= $4}; fix or unset $1"
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
if ((DGXNNODES > 1)); then
    if [[ -n "${SLURM_NODEID:-}" ]]; then whole SLURM_NODEID 0 5; else NODE_RANK=${NODE_RANK:-0}; whole NODE_RANK 0 5; fi
    node_rank=${SLURM_NODEID:-$NODE_RANK}
    ((node_rank < DGXNNODES)) || die "node rank $node_rank is not below DGXNNODES=$DGXNNODES; fix NODE_RANK"
    [[ -n "${MASTER_ADDR:-}" ]] || die "DGXNNODES=$DGXNNODES needs MASTER_ADDR (node 0's address; run.sub sets it)"
    MASTER_PORT=${MASTER_PORT:-29500} RDZV_TIMEOUT_S=${RDZV_TIMEOUT_S:-300}
    whole MASTER_PORT 1 5 65535
    whole RDZV_TIMEOUT_S 1 7
else
    # The configs fix DGXNNODES (the node count is part of the system and of the global batch): a node told
    # that it is one of several by NODE_RANK or MASTER_ADDR must not train alone on a one-node config.
    if [[ -n "${NODE_RANK:-}${MASTER_ADDR:-}" ]]; then
        die "NODE_RANK=${NODE_RANK:-} MASTER_ADDR=${MASTER_ADDR:-} are set but DGXNNODES=1 (the config's node" \
            "count); unset both for one node, or source a multi-node config (e.g. config_DGXA100_2x8.sh)"
    fi
    node_rank=0
fi
zero_or_one DRY_RUN
zero_or_one BIND_CPU
zero_or_one CACHE_CLEARED
dry_run=${DRY_RUN:-0}
LOGDIR=${LOGDIR:-./results}
export LOGDIR
RESULTS="$LOGDIR/$DGXSYSTEM/resnet"

# The interpreter must hold the benchmark's dependencies: say which one is missing, and how to get it, in one line.
probe='import importlib.util as u, sys
install = {"ffcv": "pip install ffcv==1.0.2 (README: Data)", "nvidia.dali": "pip install --extra-index-url " \
           "https://pypi.nvidia.com nvidia-dali-cuda120 (the NGC PyTorch image has it)"}
for m in ("torch", "mlperf_logging", *sys.argv[1:]):
    try:
        found = u.find_spec(m) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        sys.exit(f"no module named {m!r}" + (f"; {install[m]}" if m in install else ""))'
loader_module=$("$PYTHON" -c 'import sys, resnet.data.loaders as l; print(l.declared(sys.argv[1]).needs)' \
    "${LOADER:-ffcv}" 2>/dev/null) || loader_module=torch   # an unknown LOADER: check-env names it below
if ! problem=$("$PYTHON" -c "$probe" "$loader_module" 2>&1 && "$PYTHON" -c 'import resnet.launch, compliance' 2>&1); then
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
    # The static rendezvous: node 0 hosts the store and global rank 0 (the log's writer) is on node 0, so the
    # node that claims the log is the node that writes it. Its store waits RDZV_TIMEOUT_S for the others.
    launcher+=(--node_rank="$node_rank" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"
               --rdzv_conf="timeout=$RDZV_TIMEOUT_S")
else
    launcher+=(--standalone)
fi
if [[ "${BIND_CPU:-0}" == 1 ]]; then
    # Each local rank is bound to the cores of its GPU's socket (README: CPU binding): `exclusive` would leave a
    # DGX A100 rank 8 cores (NPS4) for 8+ FFCV threads. PyTorch 2.6 (NGC 25.01) has no --numa-binding: say so.
    if "$PYTHON" -c 'from torch.numa.binding import AffinityMode; AffinityMode("socket")' 2>/dev/null; then
        launcher+=(--numa-binding=socket)
    else
        warn "BIND_CPU=1 ignored: this PyTorch's torchrun has no --numa-binding=socket (NGC 25.12 has it)"
    fi
fi

# The next free result_N.txt, created empty here with O_EXCL (bash noclobber): of two launches into one LOGDIR
# exactly one gets each name, and a name taken by anything (a file, a link, a dangling link) is skipped.
claim_log() {
    local n=0 f
    while :; do
        f="$RESULTS/result_$n.txt"
        if [[ ! -e "$f" && ! -L "$f" ]]; then
            if (set -C; : >"$f") 2>/dev/null; then echo "$f"; return 0; fi
            [[ -e "$f" || -L "$f" ]] || return 1            # not taken, yet not creatable
        fi
        n=$((n + 1))
    done
}
next_log() {  # what claim_log would take (a dry run creates nothing)
    local n=0
    while [[ -e "$RESULTS/result_$n.txt" || -L "$RESULTS/result_$n.txt" ]]; do n=$((n + 1)); done
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

# torchrun's console, a line at a time as it comes (a bash loop: no block-buffering filter), without
# torchrun's own log lines and stack traces: a failed worker (ChildFailedError; its failure table's first exit
# status goes into the file $1), a forwarded signal (SignalException), a rendezvous or store that failed (its
# last line goes into the file $2). Every other traceback (the trainer's own errors) passes through unchanged.
# It ignores the stop signals: a Ctrl-C to the whole group must leave it to show the trainer's last lines.
# MLPERF_RESNET_DEBUG=1 shows torchrun's console unfiltered.
console_filter() {
    trap '' INT TERM HUP
    if [[ "${MLPERF_RESNET_DEBUG:-0}" == 1 ]]; then exec cat; fi
    local line held=() block=() table=0 bars=0 found=0 dropped=0
    # After a dropped torch error: the C++ frames its message carries ("Exception raised from ...", "frame #3: ...")
    local frames='^(Exception raised from |frame #[0-9]+: |<omitting python frames>|$)'
    local store_log='^\[[IWE][0-9]{4} [0-9:.]+ [A-Za-z_]+\.cpp:[0-9]+\] \[c10d\] '
    local torch_log='^[IWE][0-9]{4} [0-9:.]+ +[0-9]+ torch/distributed/' own='^torch\.distributed\.elastic\..*(ChildFailedError|SignalException)'
    while IFS= read -r line || [[ -n "$line" ]]; do
        if ((table)); then
            if ((!found)) && [[ "$line" =~ ^\ *exitcode\ *:\ *(-?[0-9]+) ]]; then
                echo "${BASH_REMATCH[1]}" >"$1"; found=1
            fi
            if [[ "$line" =~ ^=+$ ]] && ((++bars == 2)); then table=0; fi
            continue
        fi
        if ((dropped)) && [[ "$line" =~ $frames ]]; then continue; fi
        dropped=0
        if ((${#held[@]} == 0)); then
            if [[ "$line" == "Traceback (most recent call last):" ]]; then held=("$line"); continue; fi
            if [[ "$line" =~ $store_log ]]; then dropped=1; continue; fi   # the store's C++ error, said below
            [[ "$line" =~ $torch_log ]] || echo "$line"
            continue
        fi
        held+=("$line")
        # Inside a traceback, or between the tracebacks of a chain ("The above exception ...").
        if [[ ! "$line" =~ ^[^[:space:]] || "$line" =~ ^(The above exception|During handling of the above) ||
              "$line" == "Traceback (most recent call last):" ]]; then
            continue
        fi
        block=("${held[@]}") held=()
        if [[ "$line" =~ $own ]]; then
            [[ "$line" != *ChildFailedError* ]] || { table=1 bars=0; }
            dropped=1
        elif [[ "$line" =~ ^torch\.distributed\.(elastic\.rendezvous\.|DistStoreError|DistNetworkError|DistError) ]]; then
            echo "${line:0:300}" >"$2"
            dropped=1
        else
            printf '%s\n' "${block[@]}"
        fi
    done
    if ((${#held[@]})); then printf '%s\n' "${held[@]}"; fi
}

if [[ "$dry_run" != 1 ]]; then
    command -v torchrun >/dev/null || die "torchrun is not on PATH (it comes with PyTorch); activate the" \
        "environment of PYTHON=$PYTHON or add its bin folder to PATH"
    mkdir -p "$RESULTS" 2>/dev/null || die "LOGDIR $LOGDIR is not writable; set LOGDIR"
    work=$(mktemp -d) || die "cannot create a temporary folder; check TMPDIR"
    trap 'rm -rf "$work"' EXIT
fi

run_stop_status() {  # what the log's run_stop says: success, aborted, or nothing (no run_stop)
    local stop
    stop=$(grep -F '"key": "run_stop"' "$1" 2>/dev/null | tail -n 1)
    [[ "$stop" =~ \"status\":\ \"([a-z]+)\" ]] && echo "${BASH_REMATCH[1]}"
}

new_logs=()
failed=0 errors=0 done_exps=0 log=""
for ((i = 0; i < NEXP; i++)); do
    [[ -z "$stopped_by" ]] || break
    if [[ -n "${SEED:-}" ]]; then seed=$((SEED + i)); else seed=$("$PYTHON" -c 'import random; print(random.SystemRandom().randrange(2**31))'); fi
    # A launcher that dropped the host's cache itself (run_with_docker.sh, run.sub) says so in CACHE_CLEARED.
    cleared=${CACHE_CLEARED:-0}
    if [[ -z "${CACHE_CLEARED:-}" && "$dry_run" != 1 ]] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        cleared=1
    fi
    # Global rank 0 (on node 0) writes the log: only node 0 claims one.
    log_flag=()
    if ((node_rank == 0)); then
        if [[ "$dry_run" == 1 ]]; then log=$(next_log); else log=$(claim_log) || die "cannot create a log in $RESULTS; check LOGDIR"; fi
        log_flag=(--log-file "$log")
    fi
    if [[ -n "$stopped_by" ]]; then     # it came while this experiment was prepared (sync, claim): none starts
        if [[ -n "$log" && -f "$log" && ! -L "$log" && ! -s "$log" ]]; then rm -f -- "$log"; fi
        break
    fi
    cmd=("${launcher[@]}" -m resnet.train "${FLAGS[@]}" --seed "$seed" "${log_flag[@]}" --cache-cleared "$cleared")
    if [[ "$dry_run" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        continue
    fi
    echo "=== experiment $((i + 1))/$NEXP: seed $seed -> ${log:-the log of node 0} (page cache dropped: $cleared)" >&2
    if ((DGXNNODES > 1)); then
        echo "=== node $node_rank of $DGXNNODES: waiting up to $RDZV_TIMEOUT_S s (RDZV_TIMEOUT_S) for all $DGXNNODES" \
             "nodes at $MASTER_ADDR:$MASTER_PORT" >&2
    fi
    start=$(date +%s)
    rm -f "$work/status" "$work/lost" "$work/stderr"
    mkfifo "$work/stderr" || die "cannot create a pipe in $work"
    console_filter "$work/status" "$work/lost" <"$work/stderr" >&2 &
    filter=$!
    # Its own process group (set -m), so that a terminal's Ctrl-C reaches it only through forward().
    set -m
    "${cmd[@]}" </dev/null 2>"$work/stderr" &
    child=$!
    set +m
    # A signal that came while it was being started found no child to pass to.
    if [[ -n "$stopped_by" ]]; then pass_on "$stopped_by"; fi
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done   # a forwarded signal interrupts wait
    wait "$filter"
    child=""
    status=$rc
    if [[ -s "$work/status" ]]; then
        status=$(<"$work/status")
    fi
    if [[ -n "$stopped_by" && $rc != 0 && ( ! -s "$work/status" || "$status" == -15 ) ]]; then
        status=4        # torchrun was signalled and reports 1, or a starting trainer got the SIGTERM above
    fi
    if [[ -s "$work/lost" ]] && ((DGXNNODES > 1)); then
        echo "run_and_time.sh: error: node $node_rank: the rendezvous or store at $MASTER_ADDR:$MASTER_PORT failed" \
             "($(<"$work/lost")); start all $DGXNNODES nodes within RDZV_TIMEOUT_S=$RDZV_TIMEOUT_S s of each other" \
             "and check that node 0 is reachable there" >&2
    elif [[ -s "$work/lost" ]]; then
        echo "run_and_time.sh: error: torchrun's store failed ($(<"$work/lost")); see MLPERF_RESNET_DEBUG=1" >&2
    fi
    echo "=== experiment $((i + 1))/$NEXP: seed $seed exit $status ($(meaning "$status"))" \
         "after $(($(date +%s) - start)) s" >&2
    done_exps=$((done_exps + 1))
    if [[ -n "$log" && -f "$log" && ! -L "$log" && ! -s "$log" ]]; then
        rm -f -- "$log"                 # refused before it wrote a line: no stub log is left behind
    elif [[ -n "$log" && -s "$log" ]]; then
        new_logs+=("$log")
    fi
    if [[ "$status" != 0 ]]; then failed=$((failed + 1)); fi
    if [[ "$status" == 1 || "$status" == -* ]]; then errors=$((errors + 1)); fi
done
[[ "$dry_run" == 1 ]] && exit 0

if [[ -n "$stopped_by" ]]; then
    said="run_and_time.sh: stopped by SIG$stopped_by after $done_exps of $NEXP experiments"
    if [[ -n "$log" && "$(run_stop_status "$log")" == aborted ]]; then
        said+="; the interrupted run is logged as aborted in $log"
    elif [[ -n "$log" && -s "$log" ]]; then
        said+="; $log has no run_stop aborted (the trainer did not finish its stop)"
    fi
    if [[ -n "${CHECKPOINT_DIR:-}" ]]; then
        said+="; its checkpoint is in $CHECKPOINT_DIR: run the same command again to continue it"
        said+=" (RESUME=auto, the default; RESUME=1 insists on it; RESUME=0 refuses while it is unfinished)"
    fi
    echo "$said" >&2
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
    "$PYTHON" -m compliance.check ${TARGET_ACCURACY:+--target "$TARGET_ACCURACY"} "${new_logs[@]}" || checked=1
fi
# At the runs' own target when it is not MLPerf's 0.759 (then "not a submission score"); at 0.759 summarize's
# default, so that the summary never depends on a flag the user did not give.
target=()
if [[ -n "${TARGET_ACCURACY:-}" ]] && ! "$PYTHON" -c 'import sys; sys.exit(float(sys.argv[1]) != 0.759)' \
        "$TARGET_ACCURACY" 2>/dev/null; then
    target=(--target "$TARGET_ACCURACY")
fi
summary=1
if compgen -G "$RESULTS/result_*.txt" >/dev/null; then   # none when every run failed before its first line
    "$PYTHON" -m compliance.summarize "${target[@]}" "$RESULTS"
    summary=$?
fi
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
