# shellcheck shell=bash
# CPU: the embedded default (`make benchmark`), one process on this machine's cores: the CPU proxy of the
# ImageNet run, on the synthetic FFCV data set in data/proxy-ffcv (`mlperf-resnet synth` defaults; see README).
#
# Geometry follows ImageNet's at a quarter of the side. resnet_cpu is torchvision's ResNet stages (narrowed to
# 16-32-64-128, one block each) behind a 3x3 stride-1 stem with no max-pool: it reduces its input 8x where
# ResNet-50 reduces 32x, so 22 / 44 / 56 px crops give the 3x3 / 6x6 / 7x7 final feature maps that ResNet-50
# gets from 88 / 176 / 224 px. The images are ~1/4 of ImageNet's (long side 112 px). The Mild recipe is
# unchanged otherwise: 28 epochs, 8 of warm-up, evaluation after every 3 completed epochs, BlurPool,
# label-smoothed BCE, log-bias init, EMA (the same fraction of an epoch as on ImageNet), RandomResizedCrop
# scale 0.08-1. Calibration runs: top-1 ~0.2 after 3 epochs, ~0.5 after 12, passes 0.759 after 18-21.

## System
CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")
DGXSYSTEM=$(basename "$CONFIG_FILE" | sed 's/^config_//' | sed 's/\.sh$//')
export CONFIG_FILE DGXSYSTEM
export DGXNGPU=1                # processes (torchrun --nproc_per_node), not GPUs, here
export DGXNNODES=1
export DEVICE=cpu

## Runs (user-overridable)
export NEXP="${NEXP:-5}"
DATADIR="${DATADIR:-$(dirname "$CONFIG_FILE")/data/proxy-ffcv}"
export DATADIR
export LOGDIR="${LOGDIR:-./results}"
# WALLTIME is bash arithmetic, which would run a command hidden in NEXP ('a[$(cmd)]'): computed only from a
# plain number (run_and_time.sh then refuses any other NEXP in one line).
if [[ "$NEXP" =~ ^[0-9]{1,4}$ ]]; then export WALLTIME=$((10 + 10#$NEXP * 5)); fi   # minutes

## Recipe
export RECIPE=mild
export ARCH=resnet_cpu
export LOADER=ffcv
export EPOCHS=28                # as on ImageNet
export WARMUP_EPOCHS=8
export EVAL_EVERY_EPOCHS=3
export BATCHSIZE=64             # one process: global batch 64, 20 steps per epoch of 1,280 images
export LR=0.3                   # peak; 0.001 x batch would be 0.064, too slow for 560 steps in all
export TARGET_ACCURACY=0.759    # the ImageNet target, on the synthetic task
export PRECISION=fp32           # no fast half precision on these CPUs
export NUM_WORKERS=1            # one FFCV thread decodes 1,280 small images in 0.15 s an epoch; two would
                                # double its JIT compile time (15 s a run, not 8) for nothing; torch keeps 2
export TRAIN_CROP_PX=44         # 176 / 4; progressive resizing starts at 22 (88 / 4)
export RESIZE_INCREMENT_PX=1    # 4 / 4: sides 22, 24, 26, ... 44 as ImageNet's 88, 96, 104, ... 176
export EVAL_CROP_PX=56          # 224 / 4
export EVAL_RESIZE_PX=58        # 232 / 4 (FixRes: centre crop 224 of 232)
# No EMA settings: the recipe's EMA is counted in epochs (half-life 0.16, an update every 0.032), which on
# 20 steps an epoch is an update every step with a half-life of 3.2 steps.
