"""EMA of the weights (RECIPE.md section 8), buffers (BatchNorm statistics) included."""
import copy

import torch
from torch import nn


class EMA(nn.Module):
    """ema = decay * ema + (1 - decay) * model over the floating-point parameters and buffers; integer buffers
    (BatchNorm's num_batches_tracked) are copied. It starts as a copy at the first `update_parameters` call.

    The surface of torch.optim.swa_utils.AveragedModel that the trainer and checkpoints use (`module`,
    `update_parameters`, `n_averaged`, the same state_dict keys), without its host syncs: AveragedModel asks
    `if n_averaged == 0` on the host and copies the counter to the device at every update. Here the counter
    stays on the device and the first update's copy is the same formula with decay 0 (0 * ema + 1 * model is
    exactly the model), so an update is a few multi-tensor kernels and never waits for the GPU. (The decay is
    a device tensor, and _foreach_lerp_ would read a tensor weight back to the host: hence mul and add.)"""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        device = next(self.module.parameters()).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        floats = [(a, b.detach()) for a, b in zip(ours, theirs) if a.is_floating_point()]
        integers = [(a, b) for a, b in zip(ours, theirs) if not a.is_floating_point()]
        if floats:
            decay = torch.where(self.n_averaged == 0, 0.0, self.decay).to(floats[0][0].device, torch.float32)
            averages = [a for a, _ in floats]
            torch._foreach_mul_(averages, decay)
            torch._foreach_add_(averages, torch._foreach_mul([b for _, b in floats], 1.0 - decay))
        if integers:
            torch._foreach_copy_([a for a, _ in integers], [b for _, b in integers])
        self.n_averaged.add_(1)


def ema_model(model: nn.Module, decay: float) -> EMA:
    """An EMA of `model` with `decay` per update (see EMA)."""
    return EMA(model, decay)
