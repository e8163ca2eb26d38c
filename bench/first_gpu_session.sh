#!/bin/bash
# Every number the first GPU session must measure (BENCHMARKS.md, "What the first GPU session must measure"), in
# one run, everything under OUT:
#
#   CONFIG=config_DGXA100.sh DATADIR=/data/imagenet-ffcv IMAGES=/data/imagenet bench/first_gpu_session.sh OUT
#
#   gpu_check.json / .log   AMP fp16/bf16 and channels-last correctness, FFCV batches on the GPU, a 1-GPU torchrun
#                           run whose log passes the official checker, eager and compiled img/s, and the projection
#                           of CONFIG's time to train (minutes per epoch, model- or loader-bound) on DATADIR
#   ddp.json / .log         the trainer's step with DDP on every GPU, cudnn.benchmark off and on (the autotune
#                           warm-up is warmup_s on minus off), one compile, no stray context on GPU 0 (NVML)
#   loader_ffcv.json        per-rank FFCV rate with every rank loading at once (DATADIR)
#   loader_dali.json        the same with DALI decoding on the GPU (IMAGES: the ImageNet folders)
#   summary.txt             one line per number, PASS/FAIL, and what was not measured
#
# SMOKE=1 runs the same steps on the CPU (tiny sizes, the CPU proxy's data): it proves the script, not the
# numbers, and lists every part that needs CUDA as NOT MEASURED. Without CUDA and without SMOKE=1 it fails at once.
set -u
OUT=${1:?usage: [SMOKE=1] [CONFIG=config_X.sh DATADIR=... IMAGES=...] bench/first_gpu_session.sh OUT}
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
SMOKE=${SMOKE:-0}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' && [ "$SMOKE" != 1 ]; then
    echo "first_gpu_session: error: no CUDA device visible; this script measures a GPU (SMOKE=1 proves it on the CPU)" >&2
    exit 1
fi
mkdir -p "$OUT" || exit 1
failed=0

step() {  # step NAME COMMAND...: run it, its output in OUT/NAME.log, PASS/FAIL on stdout
    local name=$1; shift
    if "$@" >"$OUT/$name.log" 2>&1; then echo "PASS: $name"; else echo "FAIL: $name (exit $?; $OUT/$name.log)"; failed=1; fi
}

if [ "$SMOKE" = 1 ]; then
    # the CPU proxy's data set (folders and FFCV files), made once under data/bench
    read -r IMAGES DATADIR < <("$PY" -c 'from bench.common import DEFAULT_CACHE, synthetic_dataset as s; print(*s(DEFAULT_CACHE))')
    CONFIG=config_CPU.sh; NPROC=1; DEVICE=cpu; LOADER_ARGS=(--workers 1 --batch-size 16 --crop 44 --eval-crop 56 --eval-resize 58 --batches 10 --warmup 2)
    step gpu_check "$PY" bench/gpu_check.py --cpu-smoke --config "$CONFIG" --datadir "$DATADIR" --through-epoch 3 --out "$OUT/gpu_check.json"
    step ddp "$PY" bench/gpu_check.py --ddp --cpu-smoke --no-compile --out "$OUT/ddp.json"
else
    CONFIG=${CONFIG:-config_DGXA100.sh}; DATADIR=${DATADIR:?set DATADIR to the FFCV ImageNet}; IMAGES=${IMAGES:?set IMAGES to the ImageNet folders (DALI)}
    NPROC=$("$PY" -c 'import torch; print(torch.cuda.device_count())'); DEVICE=cuda
    LOADER_ARGS=(--workers "${NUM_WORKERS:-12}" --batch-size 256 --crop 176 --batches 300 --warmup 20)
    step gpu_check "$PY" bench/gpu_check.py --config "$CONFIG" --datadir "$DATADIR" --out "$OUT/gpu_check.json"
    step ddp "$PY" bench/gpu_check.py --ddp --out "$OUT/ddp.json"
fi
for loader in ffcv dali; do
    data=$DATADIR; [ "$loader" = dali ] && data=$IMAGES
    step "loader_$loader" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" bench/loader_ranks.py \
        --data "$data" --loader "$loader" --device "$DEVICE" "${LOADER_ARGS[@]}" --out "$OUT/loader_$loader.json"
done

# One line per number; a part that could not be measured is said so, never left out.
"$PY" - "$OUT" "$SMOKE" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
missing = 0
check = load("gpu_check.json") or {}
for name, part in check.get("parts", {}).items():
    word = {"SKIP": "NOT MEASURED"}.get(part["status"], part["status"])
    missing += word != "PASS"
    print(f"{word}: {name}: {part.get('detail', '')}")
proj = check.get("projection")
if proj:
    print(f"projection: {proj['total_minutes']:.2f} min through epoch {proj['through_epoch']} ({proj['config']}); "
          f"bound by " + ", ".join(sorted({r['bound'] for r in proj['rows']})))
ddp = load("ddp.json")
if ddp:
    rows = {(r["cudnn_benchmark"], r["px"]): r for r in ddp["rows"]}
    for (bench, px), r in sorted(rows.items()):
        print(f"ddp x{ddp['world_size']} cudnn.benchmark={bench} {px} px: {r['images_per_s']} img/s, warm-up {r['warmup_s']} s")
    for px in sorted({px for _, px in rows}):
        if (True, px) in rows and (False, px) in rows:
            print(f"cuDNN autotune warm-up at {px} px: {rows[True, px]['warmup_s'] - rows[False, px]['warmup_s']:.2f} s")
    word = {"SKIP": "NOT MEASURED"}.get(ddp["gpu0"]["status"], ddp["gpu0"]["status"])
    missing += word != "PASS"
    print(f"{word}: gpu0_contexts: {ddp['gpu0']['detail']}")
for loader in ("ffcv", "dali"):
    r = load(f"loader_{loader}.json")
    print(f"loader {loader}: " + (f"{r['slowest_rank_img_s']:.0f} img/s per rank (slowest of {r['ranks']}), first batch "
                                  f"{r['train_first_batch_s']:.1f} s" if r else "NOT MEASURED (see its log)"))
    missing += r is None
print(f"{'smoke run: ' if smoke else ''}{missing} part(s) not measured or failed")
sys.exit(0 if smoke or missing == 0 else 1)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || failed=1
exit $failed
