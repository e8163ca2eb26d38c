"""The timed loops of bench/gpu_check.py: one training step of the trainer (`mild`) or of a plain torchvision loop,
and `measure`, its pipelined images/s."""
import time

NUM_CLASSES = 1000
BENCH_LR = 0.01   # the timing does not depend on it; a small one keeps the random-data training stable


def _dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def _is_channels_last(t) -> bool:
    import torch

    return t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last)


class TrainStep:
    """One training step of either loop: step(images, labels, side_px) -> (loss, logits).

    mild   the trainer's own `resnet.train.train_step` on a `build_training` of the Mild recipe (ResNet-50 +
           BlurPool, channels-last, label-smoothed BCE, decoupled SGDW, its LR schedule, EMA): the step that runs.
    plain  a plain torchvision ResNet-50 step: cross-entropy, torch.optim.SGD, the loss computed under autocast
           as the trainer computes it; `channels_last` picks its memory format (the fair baseline on a GPU)."""

    def __init__(self, kind: str, device, precision: str, compile_model: bool = False, full_px: int = 176,
                 channels_last: bool = False, world_size: int = 1):
        import torch
        import torch.nn.functional as F
        import torchvision

        self.device, self.precision, self.full_px, self.kind = device, precision, full_px, kind
        self.logits = None
        if kind == "mild":
            from resnet import train
            from resnet.recipe import Plan, get_recipe

            recipe = get_recipe("mild").replace(precision=precision)
            plan = Plan(recipe, NUM_CLASSES, train_samples=1_281_167, eval_samples=50_000, world_size=world_size)
            self.training = train.build_training(plan, device, compile_model)
            self.model, self.scaler, self._step = self.training.model, self.training.scaler, train.train_step
            self.model.fc.register_forward_hook(self._keep_logits)
            self.memory_format = torch.channels_last
        elif kind == "plain":
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            self.model = torchvision.models.resnet50(num_classes=NUM_CLASSES).to(device, memory_format=self.memory_format)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=BENCH_LR, momentum=0.875, weight_decay=5e-4)
            self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
            self.net = torch.compile(self.model, dynamic=False) if compile_model else self.model
            self.loss_fn = F.cross_entropy
        else:
            raise ValueError(f"unknown loop {kind!r}")

    def _keep_logits(self, module, inputs, output):
        self.logits = output

    def batch(self, batch_size: int, side_px: int):
        """Random inputs as the loop sees them, in the dtype the loader yields for this precision: mild gets the
        loader's full-size crops, plain the side itself."""
        import torch

        px = self.full_px if self.kind == "mild" else side_px
        images = torch.randn(batch_size, 3, px, px, device=self.device).to(_dtype(self.precision))  # as loaded
        images = images.contiguous(memory_format=self.memory_format)
        return images, torch.randint(0, NUM_CLASSES, (batch_size,), device=self.device)

    def __call__(self, images, labels, side_px: int):
        import torch

        if self.kind == "mild":
            return self._step(self.training, images, labels, side_px), self.logits
        with torch.autocast(self.device.type, dtype=_dtype(self.precision), enabled=self.precision != "fp32"):
            logits = self.net(images)
            loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits


def measure(step: TrainStep, batch_size: int, side_px: int, warmup: int, steps: int) -> dict:
    """images/s of `step` at `side_px` over `steps` pipelined steps after `warmup` untimed ones: the device is
    synchronised at the two ends only, as the trainer never waits for a step (a sync per step would add the
    launch latency the trainer hides)."""
    import torch

    sync = torch.cuda.synchronize if step.device.type == "cuda" else (lambda: None)
    images, labels = step.batch(batch_size, side_px)
    started = time.perf_counter()
    for _ in range(warmup):
        step(images, labels, side_px)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(images, labels, side_px)
    sync()
    step_s = (time.perf_counter() - t0) / steps
    return dict(px=side_px, images_per_s=round(batch_size / step_s, 1), step_ms_mean=round(step_s * 1e3, 2),
                warmup_s=round(t0 - started, 2), timed_steps=steps)
