"""Decoupled SGDW (RECIPE section 5): weight decay scaled by lr_now / lr_peak, applied to every parameter."""
import torch


class DecoupledSGDW(torch.optim.Optimizer):
    """Per step: buf = momentum * buf + grad (buf starts at zero, so the first step gives buf = grad, as
    torch.optim.SGD); p *= 1 - (lr / peak_lr) * weight_decay; p -= lr * buf.

    Every update is a multi-tensor (foreach) operation over the whole group: on a GPU that is a handful of
    kernel launches for ResNet-50's 161 parameters instead of a Python loop of them, with the same arithmetic
    as the per-tensor loop. `peak_lr` defaults to the group's `initial_lr` (set by torch.optim.lr_scheduler) or
    its starting lr.

    Under a GradScaler (fp16), `scaler.step(opt)` hands this optimiser the loss scale and the inf/NaN flag as
    device tensors (`_step_supports_amp_scaling`) instead of reading the flag on the host to decide whether to
    call step(): the gradients are unscaled here, and a step with a non-finite gradient leaves the weights and
    momentum buffers exactly as they were, decided on the device, so a step never waits for the host.

    `fused` (default: on CUDA parameters): that scaled step goes through PyTorch's fused SGD kernel
    (`torch._fused_sgd_`, which unscales, skips on found_inf and updates momentum and weights in one pass), after
    the decoupled decay, itself one foreach multiply by a factor that is 1 on a skipped step. Without a scaler
    (fp32, bf16) or with fused=False the foreach path runs. Both agree within float32 rounding (the fused kernel
    divides by the scale, the foreach path multiplies by its float32 reciprocal)."""

    _step_supports_amp_scaling = True

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, peak_lr=None,
                 fused=None):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      peak_lr=lr if peak_lr is None else peak_lr))
        self.fused = fused   # an attribute, not a group entry: checkpoints keep their param_groups as they were

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by GradScaler.step for the length of this call (torch/amp/grad_scaler.py): the scale the gradients
        # still carry (None once scaler.unscale_ has run) and the sum of its per-device inf/NaN flags.
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            fused = params[0].is_cuda if self.fused is None else self.fused
            if fused and found_inf is not None:
                self._fused_update(group, params, grad_scale, found_inf)
            else:
                self._update(group, params, grad_scale, found_inf)
        return loss

    def _buffers(self, params: list) -> list:
        for p in params:
            if "momentum_buffer" not in self.state[p]:   # zero: the first step gives buf = grad
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [self.state[p]["momentum_buffer"] for p in params]

    def _fused_update(self, group: dict, params: list, grad_scale, found_inf) -> None:
        lr, momentum = group["lr"], group["momentum"]
        decay = group["weight_decay"] * lr / group["peak_lr"]
        found_inf = found_inf.to(params[0].device)
        if decay:   # first, as the foreach path: p * (1 - decay), a factor of 1 on a skipped step
            torch._foreach_mul_(params, torch.where(found_inf > 0, 1.0, torch.full_like(found_inf, 1.0 - decay)))
        # is_first_step=False on zeroed buffers: buf = momentum * 0 + grad = grad exactly, and a skipped first
        # step leaves them zero, as the foreach path does. The kernel skips when found_inf == 1: GradScaler's sum
        # of per-device flags, one device per process here.
        torch._fused_sgd_(params, [p.grad for p in params], self._buffers(params) if momentum else [],
                          weight_decay=0.0, momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                          is_first_step=False, grad_scale=None if grad_scale is None else
                          grad_scale.to(params[0].device), found_inf=found_inf)

    def _update(self, group: dict, params: list, grad_scale, found_inf) -> None:
        grads = [p.grad for p in params]
        lr, momentum = group["lr"], group["momentum"]
        decay = group["weight_decay"] * lr / group["peak_lr"]
        keep, factor, skip = momentum, 1.0 - decay, None
        if grad_scale is not None:
            # The same unscaling as GradScaler.unscale_: grad * float32(1 / float64(scale)).
            torch._foreach_mul_(grads, grad_scale.double().reciprocal().float().to(params[0].device))
        if found_inf is not None:
            # A skipped step, decided on the device: zero gradients (a fill: inf * 0 is NaN), a momentum and a
            # decay factor of 1 and a learning rate of 0 make every update below an exact no-op. No foreach op
            # fills by a flag, hence one small kernel per gradient.
            skip = found_inf.to(params[0].device) > 0
            for g in grads:
                g.masked_fill_(skip, 0.0)
            one = torch.ones((), device=params[0].device)
            keep, factor = torch.where(skip, one, momentum), torch.where(skip, one, 1.0 - decay)
        if momentum:
            bufs = self._buffers(params)
            torch._foreach_mul_(bufs, keep)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        if decay or skip is not None:
            torch._foreach_mul_(params, factor)
        if skip is None:
            torch._foreach_add_(params, grads, alpha=-lr)
        else:                  # alpha must be a host number: the learning rate as a device tensor instead
            torch._foreach_sub_(params, torch._foreach_mul(grads, torch.where(skip, 0.0, one * lr)))
