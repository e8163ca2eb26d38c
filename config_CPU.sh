# shellcheck shell=bash
# CPU: one process on this machine's cores, on the synthetic FFCV data set in data/synth-ffcv (see README).
# The embedded default: it exercises the whole benchmark path (loader, model surgery, loss, schedule, EMA,
# evaluation, mllog, compliance) in minutes, not the ImageNet result. A ResNet-18 on small crops stands in for
# the ResNet-50; the Mild recipe's methods and schedule shapes are unchanged.
# Calibrated on `make benchmark`'s data set (10 classes x 320 images, 64 px): top-1 passes 0.759 around epoch
# 16 of 18 (0.80 at epoch 16, 0.84 at the end in a calibration run), about 2 minutes per seed on 2 cores.

## System
CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")
DGXSYSTEM=$(basename "$CONFIG_FILE" | sed 's/^config_//' | sed 's/\.sh$//')
export CONFIG_FILE DGXSYSTEM
export DGXNGPU=1                # processes (torchrun --nproc_per_node), not GPUs, here
export DGXNNODES=1

## Runs (user-overridable)
export NEXP="${NEXP:-5}"
DATADIR="${DATADIR:-$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/data/synth-ffcv}"
export DATADIR
export LOGDIR="${LOGDIR:-./results}"
export WALLTIME=$((10 + NEXP * 20))

## Recipe
export RECIPE=mild
export ARCH=resnet18
export LOADER=ffcv
export EPOCHS=18
export BATCHSIZE=64             # one process: global batch 64
export EVAL_EVERY_EPOCHS=2
export WARMUP_EPOCHS=2          # the recipe's 8 of 28, rounded
export LR=0.3                   # peak; 0.001 x batch would be 0.064, too slow for 18 short epochs
export TARGET_ACCURACY=0.759    # the ImageNet target, on the synthetic task
export PRECISION=fp32           # no fast half precision on these CPUs
export NUM_WORKERS=2            # the machine has 2 cores
export TRAIN_CROP_PX=40         # progressive resizing starts at 20 px
export EVAL_CROP_PX=48
export EVAL_RESIZE_PX=52
export EMA_EVERY_SAMPLES=1280   # every 20 steps of 64, half-life 100 steps (interim, before the proxy redesign)
export EMA_HALF_LIFE_SAMPLES=6400
