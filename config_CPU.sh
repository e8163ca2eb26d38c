# shellcheck shell=bash
# CPU: one process on this machine's cores, on the synthetic FFCV data set in data/synth-ffcv (see README).
# The embedded default: it exercises the whole benchmark path (loader, model surgery, loss, schedule, EMA,
# evaluation, mllog, compliance) in minutes, not the ImageNet result. A ResNet-18 on small crops stands in for
# the ResNet-50; the Mild recipe's methods and schedule shapes are unchanged.
# TODO(lead): calibrate EPOCHS / BATCHSIZE / crops / TARGET_ACCURACY on the synthetic set (placeholders).

## System
DGXSYSTEM=$(basename "$(readlink -f "${BASH_SOURCE[0]}")" | sed 's/^config_//' | sed 's/\.sh$//')
export DGXSYSTEM
export DGXNGPU=1                # processes (torchrun --nproc_per_node), not GPUs, here
export DGXNNODES=1

## Runs (user-overridable)
export NEXP="${NEXP:-1}"
DATADIR="${DATADIR:-$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/data/synth-ffcv}"
export DATADIR
export LOGDIR="${LOGDIR:-./results}"
export WALLTIME=$((10 + NEXP * 20))

## Recipe
export RECIPE=mild
export ARCH=resnet18
export LOADER=ffcv
export EPOCHS=16
export BATCHSIZE=64             # one process: global batch 64
export EVAL_EVERY_EPOCHS=2
export TARGET_ACCURACY=0.5      # placeholder until calibrated on the synthetic classes
export PRECISION=fp32           # no fast half precision on these CPUs
export NUM_WORKERS=2            # the machine has 2 cores
export TRAIN_CROP_PX=48         # progressive resizing starts at 24 px
export EVAL_CROP_PX=56
export EVAL_RESIZE_PX=64
