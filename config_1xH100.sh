# shellcheck shell=bash
# One H100 80GB (PCIe or SXM) in any server: for development and for checking the whole path on a single GPU.
#
# Global batch 256 (one GPU x 256): the recipe's peak lr follows the global batch (0.001 per image, 0.256 here)
# and the warm-up stays 8 epochs, so this is the Mild recipe at a smaller batch, not the submitted run; its
# accuracy is expected to be close but is not validated. Time: 28 epochs of ImageNet at roughly 3,000 images/s
# (mixed 88-176 px) is about 3.5 hours per run.

# One run unless asked (a full 5-run set takes most of a day here); set before the A100 config's default of 5.
export NEXP="${NEXP:-1}"
# Everything else, DEVICE=cuda and SUBMISSION_ORG (MUST CHANGE: your organisation) included, comes from:
# shellcheck source=config_DGXA100.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/config_DGXA100.sh"

## System
CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")
DGXSYSTEM=$(basename "$CONFIG_FILE" | sed 's/^config_//' | sed 's/\.sh$//')
export CONFIG_FILE DGXSYSTEM
export DGXNGPU=1
# WALLTIME is bash arithmetic, which would run a command hidden in NEXP ('a[$(cmd)]'): computed only from a
# plain number (run_and_time.sh then refuses any other NEXP in one line).
if [[ "$NEXP" =~ ^[0-9]{1,4}$ ]]; then export WALLTIME=$((30 + 10#$NEXP * 240)); fi

## Recipe execution
# No EMA settings here: the recipe defines the EMA in epochs (a half-life of 0.16 epoch, an update every
# 0.032), so at global batch 256 it updates every 160 steps instead of 20 and averages the same images.
export PRECISION=bf16
export NUM_WORKERS=12           # a 16-core host; 4 cores left for the training process and the system
