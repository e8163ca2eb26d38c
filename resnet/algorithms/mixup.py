"""MixUp (Zhang et al. 2018, "mixup: Beyond empirical risk minimization") on the device, as Composer's MixUp with
interpolate_loss=False (RECIPE.md section 12): one mixing weight per batch, soft targets for the loss."""
import torch
import torch.nn.functional as F


def mixup_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float):
    """(mixed images, soft targets [B, num_classes]).

    lambda = min(b, 1 - b) with b ~ Beta(alpha, alpha), one draw for the batch (so the original image always has
    the larger share); each image becomes (1 - lambda) * itself + lambda * its partner under a random permutation
    of the batch, and its target (1 - lambda) * one_hot(label) + lambda * one_hot(partner's label). Both draws are
    made on the images' device from torch's RNG: nothing is read back to the host. alpha = 0: no mixing."""
    if alpha < 0:
        raise ValueError(f"MixUp alpha must be >= 0, got {alpha}")
    device, n = images.device, images.shape[0]
    if alpha == 0:
        lam = torch.zeros((), device=device)
    else:
        concentration = torch.full((), float(alpha), device=device)
        b = torch.distributions.Beta(concentration, concentration).sample()
        lam = torch.minimum(b, 1.0 - b)
    perm = torch.randperm(n, device=device)
    weight = lam.to(images.dtype)
    mixed = images * (1 - weight) + images.index_select(0, perm) * weight
    if images.is_contiguous(memory_format=torch.channels_last):
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    one_hot = F.one_hot(labels, num_classes).float()
    targets = one_hot * (1 - lam) + one_hot.index_select(0, perm) * lam
    return mixed, targets
