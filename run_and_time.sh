#!/usr/bin/env bash
# The MLPerf entry point: source a config_<SYSTEM>.sh, then run this. It runs a set of NEXP experiments (seeds
# SEED+i, or random ones), dropping the page cache before each when permitted, then the official checker on every
# log and the summary. Python decides (`python -m resnet.launch`: every check, the log claim, the set's record
# set.json, exit meanings, the verdict), bash runs (signals, the experiment loop). The same command after a stop
# continues the set (README: When things go wrong); EXPERIMENT_INDEX=i runs its experiment i alone (for launchers
# that loop themselves). DRY_RUN=1 prints each experiment's command, creates nothing. Exit: 0 for a valid summary
# (NEXP >= 5) or a smoke run all on target (NEXP < 5); 5 for a set valid at a TARGET_ACCURACY below 0.759; 128+N
# when stopped by signal N (SIGTERM/SIGINT/SIGHUP reach the trainer: checkpoint, run_stop aborted, exit 4). Several
# nodes: one copy per node (DGXNNODES, MASTER_ADDR[:MASTER_PORT], SLURM_NODEID or NODE_RANK); node 0 claims the logs.
set -uo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || exit 1

die() { echo "run_and_time.sh: error: $*" >&2; exit 1; }
warn() { echo "run_and_time.sh: warning: $*" >&2; }
# Signals ignored when bash starts cannot be trapped: a Ctrl-C would then never reach the trainer.
if [[ "$(trap -p INT)" == "trap -- '' SIGINT" ]]; then
    warn "SIGINT is ignored in this shell: Ctrl-C cannot stop the run; start it with set -m or send SIGTERM"
fi
# A signal goes straight to the trainers (torchrun's workers), not their compiler or loader processes: torchrun
# kills a worker 30 s after passing one on. A Python still importing gets SIGTERM (SIGINT: a traceback).
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
        if catches_hup "$worker"; then      # the trainer alone: its compiler and loader processes go on
            kill -s "$1" "$worker" 2>/dev/null
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

PYTHON=${PYTHON:-python3}
export LOGDIR=${LOGDIR:-./results}
py() {  # python -m resnet.launch VERB ...: the checks and the set's bookkeeping, shielded from the stop signals
    (trap '' INT TERM HUP; exec "$PYTHON" -m resnet.launch "$@")
}
if ! problem=$(py deps "${LOADER:-ffcv}" 2>&1); then
    die "PYTHON=$PYTHON cannot run the benchmark (${problem##*$'\n'}); set PYTHON to the environment's python" \
        "(pip install -e . there) or activate it"
fi
# Every setting checked in Python first: launch numbers as "set NAME=VALUE", train flags as "flag WORD" (NUL-ended).
nexp=0 gpus=0 nodes=0 node_rank=0 master_port=0 rdzv_timeout_s=0 dry_run=0 bind_cpu=0 results="" FLAGS=()
mapfile -d '' prepared < <(py prepare) && wait "$!" || exit 1
for word in "${prepared[@]}"; do
    case "$word" in
        "set "*) word=${word#set }; printf -v "${word%%=*}" '%s' "${word#*=}" ;;
        "flag "*) FLAGS+=("${word#flag }") ;;
    esac
done
export MLPERF_RESNET_WARNED=1   # prepare printed the settings' warnings: the trainers do not repeat them
[[ "$dry_run" != 1 || -d "${DATADIR:-}" ]] ||
    warn "DATADIR=${DATADIR:-} is not a folder on this machine; the commands below are for the machine that has it"

launcher=(torchrun --nproc_per_node="$gpus" --nnodes="$nodes")
if ((nodes > 1)); then
    # The static rendezvous: node 0 hosts the store and global rank 0 (the log's writer claims it there).
    launcher+=(--node_rank="$node_rank" --master_addr="$MASTER_ADDR" --master_port="$master_port"
               --rdzv_conf="timeout=$rdzv_timeout_s")
else
    launcher+=(--standalone)
fi
if ((bind_cpu)); then launcher+=(--numa-binding=socket); fi   # README: CPU binding (resnet.launch.resolve)

# torchrun's console line by line without torchrun's own log lines and tracebacks: a failed worker (its first exit
# status -> file $1), a forwarded signal, a failed rendezvous or store (its last line -> file $2); the trainer's own
# tracebacks pass. It ignores stop signals (to show the trainer's last lines). MLPERF_RESNET_DEBUG=1: unfiltered.
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

# The set's record, in LOGDIR (the same command after a stop runs only what is left); in the temporary folder when
# another launch runs a set there, or on a node > 0 (it follows node 0's). A dry run writes nothing.
record="$results/set.json" begin=(begin)
if [[ "$dry_run" == 1 ]]; then
    begin+=(--dry-run)
else
    command -v torchrun >/dev/null || die "torchrun is not on PATH (it comes with PyTorch); activate the" \
        "environment of PYTHON=$PYTHON or add its bin folder to PATH"
    mkdir -p "$results" 2>/dev/null || die "LOGDIR $LOGDIR is not writable; set LOGDIR"
    work=$(mktemp -d) || die "cannot create a temporary folder; check TMPDIR"
    trap 'rm -rf "$work"' EXIT
    if ((node_rank > 0)); then
        begin+=(--shared "$record") record="$work/set.json"
    elif ! { exec {lock}>>"$results/set.lock" && flock -n "$lock"; } 2>/dev/null; then
        warn "another launch is running a set in $results: this one is recorded apart and cannot be continued" \
             "after a stop (use a fresh LOGDIR per set)"
        record="$work/set.json"
    fi
fi
mapfile -d '' plan < <(py "${begin[@]}" --record "$record" -- "${FLAGS[@]}") && wait "$!" || exit 1

errors=0 index="" log=""
for entry in "${plan[@]}"; do
    [[ -z "$stopped_by" ]] || break
    entry=${entry#run } && i=${entry%% *} seed=${entry#* } index=$i
    cleared=${CACHE_CLEARED:-0}   # set by a launcher that dropped the cache itself (run_with_docker.sh, run.sub)
    if [[ -z "${CACHE_CLEARED:-}" && "$dry_run" != 1 ]] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null
    then cleared=1; fi
    # Only node 0 claims a log (global rank 0 writes it).
    log_flag=() log=""
    if ((node_rank == 0)); then
        if [[ "$dry_run" == 1 ]]; then claim=(--dry-run); else claim=(); fi
        log=$(py claim "${claim[@]}" --record "$record" --index "$i" "$results") || exit 1
        log_flag=(--log-file "$log")
    fi
    if [[ -n "$stopped_by" ]]; then     # it came while this experiment was prepared (sync, claim): none starts
        py record --record "$record" --index "$i" --status none --log "$log"; break
    fi
    cmd=("${launcher[@]}" -m resnet.train "${FLAGS[@]}" --seed "$seed" "${log_flag[@]}" --cache-cleared "$cleared")
    if [[ "$dry_run" == 1 ]]; then
        printf '%q ' "${cmd[@]}"; echo
        continue
    fi
    echo "=== experiment $((i + 1))/$nexp: seed $seed -> ${log:-the log of node 0} (page cache dropped: $cleared)" >&2
    if ((nodes > 1)); then
        echo "=== node $node_rank of $nodes: waiting up to $rdzv_timeout_s s (RDZV_TIMEOUT_S) for all $nodes" \
             "nodes at $MASTER_ADDR:$master_port" >&2
    fi
    start=$(date +%s)
    rm -f "$work/status" "$work/lost" "$work/stderr"
    mkfifo "$work/stderr" || die "cannot create a pipe in $work"
    console_filter "$work/status" "$work/lost" <"$work/stderr" >&2 &
    filter=$!
    set -m   # its own process group: a terminal's Ctrl-C reaches it only through forward()
    "${cmd[@]}" </dev/null 2>"$work/stderr" &
    child=$!
    set +m
    if [[ -n "$stopped_by" ]]; then pass_on "$stopped_by"; fi   # it came while the child was being started
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done   # a forwarded signal interrupts wait
    wait "$filter"
    child=""
    status=$rc
    if [[ -s "$work/status" ]]; then status=$(<"$work/status"); fi
    if [[ -n "$stopped_by" && $rc != 0 && ( ! -s "$work/status" || "$status" == -15 ) ]]; then
        status=4        # torchrun was signalled and reports 1, or a starting trainer got the SIGTERM above
    fi
    if [[ -s "$work/lost" ]] && ((nodes > 1)); then
        echo "run_and_time.sh: error: node $node_rank: the rendezvous or store at $MASTER_ADDR:$master_port failed" \
             "($(<"$work/lost")); start all $nodes nodes within RDZV_TIMEOUT_S=$rdzv_timeout_s s of each other" \
             "and check that node 0 is reachable there" >&2
    elif [[ -s "$work/lost" ]]; then
        echo "run_and_time.sh: error: torchrun's store failed ($(<"$work/lost")); see MLPERF_RESNET_DEBUG=1" >&2
    fi
    py record --record "$record" --index "$i" --status "$status" --seconds "$(($(date +%s) - start))" --log "$log"
    if [[ "$status" == 1 || "$status" == -* ]]; then errors=$((errors + 1)); fi
done
[[ "$dry_run" == 1 ]] && exit 0

if [[ -n "$stopped_by" ]]; then
    py stopped --record "$record" ${index:+--index "$index"} --signal "$stopped_by" "$results"
    exit $((128 + $(kill -l "$stopped_by")))
fi
if ((node_rank > 0)); then   # global rank 0 wrote the logs into the shared LOGDIR: node 0 checks and scores them
    echo "=== node $node_rank: ${#plan[@]} experiments, $errors ended in an error here (node 0 reports the results)" >&2
    exit $((errors > 0))
fi
py verdict --record "$record" "$results"
