"""Sharpness-aware minimisation (Foret et al. 2021) as Composer's SAM ran it (RECIPE.md section 12): at every k-th
step, the gradient at w (per device, not averaged), a climb to w + e(w), the gradient there (averaged), back to w,
and the optimiser's step with that second gradient; the plain step otherwise. Nothing is read back to the host."""
import contextlib

import torch


@torch.no_grad()
def sam_ascent(params, rho: float, epsilon: float = 1e-12, grad_scale=None) -> tuple[list, list]:
    """Add e(w) = rho * g / (||g|| + epsilon) to every parameter with a gradient g (||g||: the 2-norm over all of
    them), g = grad / grad_scale (the loss scale a GradScaler put on the gradients, or a function returning it;
    None: 1). Returns (those parameters, a copy of their w) for `sam_descent`. A non-finite gradient (an fp16
    overflow) gives e(w) = 0: the second pass then runs at w, decided on the device."""
    params = [p for p in params if p.grad is not None]
    saved = [p.detach().clone() for p in params]
    grads = [p.grad.float() for p in params]
    if callable(grad_scale):
        grad_scale = grad_scale()
    if grad_scale is not None:
        grads = torch._foreach_div(grads, grad_scale.float())
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    finite = torch.isfinite(norm)
    factor = rho / (norm + epsilon)
    steps = [torch.where(finite, g * factor, 0.0).to(p.dtype) for g, p in zip(grads, params)]
    torch._foreach_add_(params, steps)
    return params, saved


@torch.no_grad()
def sam_descent(params: list, saved: list) -> None:
    """Back from w + e(w) to w, exactly: a copy, not a subtraction ((w + e) - e is not w in floating point, and
    under DDP each device climbed its own e: subtracting would leave the replicas apart)."""
    torch._foreach_copy_(params, saved)


def sam_step(params, closure, rho: float, epsilon: float = 1e-12, grad_scale=None,
             first_pass=contextlib.nullcontext):
    """SAM's two passes over one batch; the caller then steps its optimiser, which finds the gradient at w + e(w).

    closure(): forward and backward of the batch, returning the loss. It runs at w inside `first_pass()` (DDP's
    `no_sync`: Composer's ascent used each device's own gradient), then, gradients cleared, at w + e(w).
    Returns the first pass's loss (the loss at w). On any model: `sam_step(model.parameters(), closure, 0.5)`."""
    params = list(params)
    with first_pass():
        loss = closure()
    moved, saved = sam_ascent(params, rho, epsilon, grad_scale)
    for p in params:
        p.grad = None
    closure()
    sam_descent(moved, saved)
    return loss
