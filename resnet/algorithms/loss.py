"""Label-smoothed binary cross-entropy (RECIPE.md section 4)."""
import torch
import torch.nn.functional as F


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """one_hot * (1 - a) + a / num_classes."""
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def label_smoothed_bce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BCE with logits, summed over classes and samples, divided by the (per-device) batch size.

    PyTorch's default "mean" would also divide by the number of classes and stall learning."""
    targets = smoothed_targets(labels, logits.shape[1], smoothing)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum")
    return loss / logits.shape[0]
