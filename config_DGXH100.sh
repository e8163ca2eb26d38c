# shellcheck shell=bash
# DGX H100: one node, 8x H100-SXM5 80GB. The Mild recipe of config_DGXA100.sh (global batch 2048) in fp16, as
# MosaicML and NVIDIA trained it, read by DALI straight from the ImageNet folders with the GPUs' JPEG decoders
# (no FFCV files to prepare). Not validated to the target yet: the recipe's accuracy was measured on A100s.

# DALI reads train/<class>/ and val/<class>/ directly: the default data folder is the ImageNet layout, set
# before the A100 config so that its FFCV default does not apply (a user's DATADIR still wins).
export DATADIR="${DATADIR:-/data/imagenet}"
# Everything else, DEVICE=cuda and SUBMISSION_ORG (MUST CHANGE: your organisation) included, comes from:
# shellcheck source=config_DGXA100.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/config_DGXA100.sh"

## System
CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")
DGXSYSTEM=$(basename "$CONFIG_FILE" | sed 's/^config_//' | sed 's/\.sh$//')
export CONFIG_FILE DGXSYSTEM
# Minutes for the whole job: a run should train in well under 20 min here; 25 per run with start-up.
# WALLTIME is bash arithmetic, which would run a command hidden in NEXP ('a[$(cmd)]'): computed only from a
# plain number (run_and_time.sh then refuses any other NEXP in one line).
if [[ "$NEXP" =~ ^[0-9]{1,4}$ ]]; then export WALLTIME=$((15 + 10#$NEXP * 25)); fi

## What H100s change in the recipe's execution (not its mathematics)
export PRECISION=fp16           # as submitted (GradScaler); bf16 needs no scaler and is one line away:
# export PRECISION=bf16
export LOADER=dali              # GPU JPEG decoding (DALI_HW_DECODER_LOAD of the images on the hardware decoder)
# DALI: NVIDIA's own H100 settings, the starting point of the sweep (hardware share x threads x prefetch) on the
# first 8-GPU machine. Source: NVIDIA's MLPerf Training v3.1 ResNet-50 submission, MXNet + DALI, repository
# mlcommons/training_results_v3.1, NVIDIA/benchmarks/resnet/implementations/mxnet/config_DGXH100.sh (commit
# f33f9444), read there by common/dali.py: DALI_THREADS=6, DALI_PREFETCH_QUEUE=5, DALI_NVJPEG_MEMPADDING=256 (MB,
# host and device), DALI_HW_DECODER_LOAD=0.99, DALI_PREALLOCATE_WIDTH/HEIGHT=5980/6430. Not taken: their per-op
# buffer-size hints (sized for their 224 px pipeline) and DALI_CACHE_SIZE=12288 (a decoded-image cache that ties
# each GPU to one fixed shard; we shuffle the whole set every epoch).
# DALI's CPU threads per GPU (file reading, the host side of decoding): 2x 56-core Xeon 8480C = 14 cores per GPU;
# with BIND_CPU=1 each rank is bound to its GPU's socket (56 cores for 4 ranks).
export NUM_WORKERS=6            # NVIDIA's DALI_THREADS
export DALI_HW_DECODER_LOAD=0.99
export DALI_PREFETCH_QUEUE=5
export DALI_NVJPEG_MEMPADDING=256
export DALI_PREALLOCATE_WIDTH=5980
export DALI_PREALLOCATE_HEIGHT=6430
