"""Label-smoothed binary cross-entropy (RECIPE.md section 4), on class labels or on soft targets (MixUp's)."""
import torch
import torch.nn.functional as F


def smoothed_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """t * (1 - a) + a / num_classes, where t is one_hot(labels) for integer labels [B], or the given soft targets
    [B, num_classes] (rows summing to 1, e.g. MixUp's blend of two one-hot rows)."""
    dense = targets.float() if targets.is_floating_point() else F.one_hot(targets, num_classes).float()
    return dense * (1.0 - smoothing) + smoothing / num_classes


def label_smoothed_bce(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BCE with logits, summed over classes and samples, divided by the (per-device) batch size. `targets`: integer
    labels [B] or soft targets [B, classes].

    PyTorch's default "mean" would also divide by the number of classes and stall learning."""
    dense = smoothed_targets(targets, logits.shape[1], smoothing)
    loss = F.binary_cross_entropy_with_logits(logits.float(), dense, reduction="sum")
    return loss / logits.shape[0]
