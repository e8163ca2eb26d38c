# shellcheck shell=bash
# DGX H100: one node, 8x H100-SXM5 80GB. The Mild recipe of config_DGXA100.sh (global batch 2048) in bf16, the
# natural precision on Hopper (no gradient scaler, fp32's range), with more FFCV workers to keep the faster GPUs fed.
# Not validated to the target yet: the accuracy of the recipe was measured in fp16 on A100s.

# Everything else, DEVICE=cuda and SUBMISSION_ORG (MUST CHANGE: your organisation) included, comes from:
# shellcheck source=config_DGXA100.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/config_DGXA100.sh"

## System
CONFIG_FILE=$(readlink -f "${BASH_SOURCE[0]}")
DGXSYSTEM=$(basename "$CONFIG_FILE" | sed 's/^config_//' | sed 's/\.sh$//')
export CONFIG_FILE DGXSYSTEM
# Minutes for the whole job: a run should train in well under 20 min here; 25 per run with start-up.
export WALLTIME=$((15 + NEXP * 25))

## What H100s change in the recipe's execution (not its mathematics)
export PRECISION=bf16
export NUM_WORKERS=12           # 2x 56-core Xeon 8480C = 14 cores per GPU; 2 left for the training process
