#!/usr/bin/env bash
# Run the benchmark on one machine in Docker: NEXP experiments in one long-lived container.
#
#   DGXSYSTEM=DGXA100 CONT=mlperf-resnet:latest DATADIR=/data/imagenet-ffcv LOGDIR=$PWD/results ./run_with_docker.sh
#
# DGXSYSTEM picks config_${DGXSYSTEM}.sh beside this script; its settings are passed into the container.
# Per experiment i (0 .. NEXP-1): the host's page cache is dropped (sudo -n sysctl, else a privileged
# container; the outcome goes in as CACHE_CLEARED=1|0 so that the run logs cache_clear truthfully), then
# `docker exec ... ./run_and_time.sh` runs experiment i of the set with the set's NEXP and SEED and
# EXPERIMENT_INDEX=i. run_and_time.sh keeps the set's record in $LOGDIR/$DGXSYSTEM/resnet/set.json (seeds SEED+i,
# or random ones drawn once), writes the experiment's result_N.txt there, and the call of the last experiment
# checks every log, summarises the set and gives the verdict: the script's exit status (run_and_time.sh's).
# Each experiment's console goes to $LOGDIR/$DGXSYSTEM/console_<stamp>_<i>.log. Use a fresh LOGDIR per set.
# DATADIR is mounted read-only at /data, LOGDIR read-write at /results, and CHECKPOINT_DIR (when set: a host
# folder, created if missing) read-write at /checkpoints, where the trainer writes last.pt (CHECKPOINT_EVERY_MINUTES
# needs it); RESUME goes in with it. The same command again after a stop runs only what is left of the set: the
# ended experiments are skipped, the interrupted one continues from its checkpoint (RESUME=auto, the default),
# the ones not started run (the first experiment's console says so in one line). An experiment stopped by a
# signal inside the container ends the set. The container is removed on exit; a signal to this script is not
# passed into the container (stop the run inside it with `docker exec <name> kill -TERM <pid of run_and_time.sh>`).
# DRY_RUN=1 prints every command (after '+ ', shell-quoted) instead of running it: no Docker needed.
# BIND_CPU=1 is passed through: run_and_time.sh then binds each local rank to the cores of its GPU's socket.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
: "${DGXSYSTEM:?set DGXSYSTEM to pick config_\${DGXSYSTEM}.sh, e.g. DGXSYSTEM=DGXA100}"
: "${CONT:?set CONT to the image built from the Dockerfile, e.g. CONT=mlperf-resnet:latest}"
config="${here}/config_${DGXSYSTEM}.sh"
[[ -f "$config" ]] || { echo "run_with_docker.sh: error: no ${config}; choose a config_*.sh" >&2; exit 2; }
dry_run="${DRY_RUN:-0}"
unset DRY_RUN   # ours, not run_and_time.sh's

whole() {  # whole NAME MIN: $NAME is a whole number >= MIN (checked before bash computes with it)
    if [[ ! "${!1}" =~ ^[0-9]{1,10}$ ]] || ((10#${!1} < $2)); then
        echo "run_with_docker.sh: error: $1=$(printf '%q' "${!1}") is not a whole number >= $2; fix or unset $1" >&2
        exit 2
    fi
    printf -v "$1" '%d' "$((10#${!1}))"
}

# The user's NEXP and SEED before the config computes with them (WALLTIME), and again after it.
if [[ -n "${NEXP:-}" ]]; then whole NEXP 1; fi
if [[ -n "${SEED:-}" ]]; then whole SEED 0; fi
# The names the config exports, then the config itself (user values of DATADIR, LOGDIR, NEXP, SEED survive it).
# (resnet.launch.config_environ reads it, as every other reader of a config does: any python3 will do)
if ! names=$(PYTHONPATH="$here" python3 -m resnet.launch config-names "$config"); then
    echo "run_with_docker.sh: error: cannot read ${config} (python3 -m resnet.launch config-names)" >&2; exit 2
fi
mapfile -t config_names <<<"$names"
# shellcheck source=config_DGXA100.sh
source "$config"
whole NEXP 1
if [[ -n "${SEED:-}" ]]; then whole SEED 0; fi
datadir=$(readlink -m "$DATADIR")
logdir=$(readlink -m "$LOGDIR")
volumes=(--volume "${datadir}:/data:ro" --volume "${logdir}:/results")
if [[ -n "${CHECKPOINT_DIR:-}" ]]; then
    ckptdir=$(readlink -m "$CHECKPOINT_DIR")
    volumes+=(--volume "${ckptdir}:/checkpoints")
fi
if [[ "$dry_run" != 1 && ! -d "$datadir" ]]; then
    echo "run_with_docker.sh: error: DATADIR=${DATADIR} is not a directory; run 'mlperf-resnet prepare' first" >&2
    exit 2
fi

# `run CMD...`: runs it, or with DRY_RUN=1 prints it on the script's stdout (whatever the call redirects).
exec 3>&1
run() {
    if [[ "$dry_run" == 1 ]]; then
        local arg line='+'
        for arg in "$@"; do
            if [[ "$arg" =~ ^[[:alnum:]_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" $(printf '%q' "$arg")"; fi
        done
        echo "$line" >&3
    else
        "$@"
    fi
}

# Drops the host's page cache so that each run reads its data cold, as MLPerf requires; sets cache_cleared.
# The sudo command is the one a sudoers rule can allow: `/sbin/sysctl vm.drop_caches=3`.
drop_caches() {
    cache_cleared=1
    run bash -c 'sync && sudo -n /sbin/sysctl vm.drop_caches=3' >/dev/null && return
    run docker run --rm --privileged --entrypoint bash "$CONT" -c 'sync && echo 3 > /proc/sys/vm/drop_caches' && return
    cache_cleared=0
    echo "run_with_docker.sh: warning: could not drop the page cache (no passwordless sudo for /sbin/sysctl," \
         "no privileged container); the run logs cache_clear=false" >&2
}

# Settings for the container: the config's exports with the container's paths, the optional ones when set.
env_args=()
# CONFIG_FILE is a host path: inside, run_and_time.sh checks the settings themselves (check-env).
for name in "${config_names[@]}" SUBMISSION_ORG SUBMISSION_STATUS COMPILE CHECKPOINT_EVERY_MINUTES BIND_CPU RESUME; do
    case "$name" in DATADIR | LOGDIR | NEXP | SEED | CHECKPOINT_DIR | CONFIG_FILE) continue ;; esac
    if [[ -n "${!name+set}" ]]; then env_args+=(--env "${name}=${!name}"); fi
done
env_args+=(--env DATADIR=/data --env LOGDIR=/results)
if [[ -n "${ckptdir:-}" ]]; then env_args+=(--env CHECKPOINT_DIR=/checkpoints); fi

cont_name="mlperf_resnet_${DGXSYSTEM}_$$"
stamp=$(date +%y%m%d%H%M%S)
run mkdir -p "${logdir}/${DGXSYSTEM}" ${ckptdir:+"$ckptdir"}
trap 'run docker rm -f "$cont_name" >/dev/null || true' EXIT
run docker run -d --rm --init --name "$cont_name" --gpus all --ipc=host \
    --ulimit memlock=-1 --ulimit stack=67108864 \
    "${volumes[@]}" \
    "$CONT" sleep infinity >/dev/null

# One run_and_time.sh per experiment i, with the set's NEXP and SEED and EXPERIMENT_INDEX=i: the set's record
# (resnet.launchset) decides what it does (run it, continue it, skip it when it ended); the last gives the verdict.
status=0
for ((i = 0; i < NEXP; i++)); do
    echo "run_with_docker.sh: experiment $((i + 1)) of ${NEXP}" >&2
    drop_caches
    experiment=(docker exec "${env_args[@]}" --env NEXP="$NEXP" ${SEED:+--env SEED="$SEED"} --env EXPERIMENT_INDEX="$i"
                --env CACHE_CLEARED="$cache_cleared" "$cont_name" ./run_and_time.sh)
    if [[ "$dry_run" == 1 ]]; then
        run "${experiment[@]}"
        continue
    fi
    console="${logdir}/${DGXSYSTEM}/console_${stamp}_${i}.log"
    status=0
    "${experiment[@]}" 2>&1 | tee "$console" || status=${PIPESTATUS[0]}
    if ((status == 129 || status == 130 || status == 143)); then
        # run_and_time.sh was stopped by a signal: it said what is logged and what the checkpoint allows.
        echo "run_with_docker.sh: experiment $((i + 1)) was stopped by a signal (status ${status}); no further" \
             "experiments: the same command again continues the set where it stopped" >&2
        exit "$status"
    elif ((status != 0 && i < NEXP - 1)); then
        echo "run_with_docker.sh: experiment $((i + 1)): run_and_time.sh exited with status ${status}; console:" \
             "${console}" >&2
    fi
done
exit "$status"   # the last experiment's run_and_time.sh gave the set's verdict (run_and_time.sh: exit statuses)
