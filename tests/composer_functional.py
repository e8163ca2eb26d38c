"""Our methods against Composer's own (issue 29 item 5): `functional_checks` compares Medium and Hot's (and, in
`mild_checks`, those of Mild that --composer's two trainers apply each their own way) with composer.functional's
forms (SAM, which has none, with its SAMOptimizer) on fixed tensors and seeds.

Composer 0.32.1 needs torch 2.6-2.7.0, so this runs in Composer's venv, never in the suite's: `python -m bench.proxy
OUT --composer` makes that venv, runs this there first and records the findings in OUT/proxy.json ("functional";
BENCHMARKS.md "Composer's Trainer side by side", docs/RECIPE.md 12.6). It imports only torch, Composer and this
repo's resnet package. Kept with the tests: it is a test of our methods against a reference implementation.
"""
import functools


def functional_checks() -> dict:
    """Our methods against Composer's functional forms on the same tensors and seeds (SAM, with none: its
    SAMOptimizer), each the largest difference relative to Composer's largest value (0: equal; RECIPE.md 12.6
    explains the others); RandAugment's suites differ by design: the pixels' mean change is compared."""
    import numpy as np
    import torch
    from composer import functional as cf, optim
    from composer.algorithms.sam import SAMOptimizer
    from PIL import Image
    from torch.nn.functional import cross_entropy, one_hot
    from torchvision.models.resnet import Bottleneck

    from resnet import algorithms as ours
    from resnet.data.torchvision_loader import RandAugment
    from resnet.model import SmallInputResNet, apply_stochastic_depth

    def gap(a, b):
        return float((a - b).abs().max() / b.abs().max()) if a.shape == b.shape else f"shapes {a.shape} {b.shape}"

    def seeded(seed, f, *args, **kwargs):
        torch.manual_seed(seed), np.random.seed(seed)
        return f(*args, **kwargs)
    x, y = torch.randn(8, 3, 44, 44, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4
    out = mild_checks(x, y, gap, seeded)
    out["colout_batch"] = gap(seeded(1, ours.colout_batch, x, 0.2, 0.2), seeded(1, cf.colout_batch, x, 0.2, 0.2))
    mixed, targets = seeded(2, ours.mixup_batch, x, y, 4, 0.25)
    b = seeded(2, torch.distributions.Beta(torch.tensor(0.25), torch.tensor(0.25)).sample)   # our draws, replayed
    lam, perm = float(torch.minimum(b, 1 - b)), torch.randperm(8)
    theirs, y_perm, _ = cf.mixup_batch(x, y, mixing=lam, indices=perm)      # and Composer's target at BEFORE_LOSS:
    out["mixup_batch"] = max(gap(mixed, theirs), gap(targets, (1 - lam) * one_hot(y, 4) + lam * one_hot(y_perm, 4)))
    nets = [seeded(3, SmallInputResNet, 4, block=Bottleneck) for _ in range(2)]
    apply_stochastic_depth(nets[0], 0.1).eval()      # after the surgery: the modules it adds start in training mode
    cf.apply_stochastic_depth(nets[1].eval(), "ResNetBottleneck", "sample", drop_rate=0.1, drop_distribution="linear")
    blocks = [[m for m in net.modules() if isinstance(m, Bottleneck)] for net in nets]
    with torch.no_grad():
        out.update(stochastic_depth_rates=gap(*torch.tensor([[a.bn3[1].p, b.drop_rate] for a, b in zip(*blocks)]).T),
                   stochastic_depth_eval=gap(nets[0](x), nets[1](x)))
        for m in blocks[0]:     # Composer's evaluation scales the branch by its keep probability: so do we
            m.bn3[0].weight.mul_(1 - m.bn3[1].p), m.bn3[0].bias.mul_(1 - m.bn3[1].p)
        out["stochastic_depth_eval_branch_scaled_as_composer"] = gap(nets[0](x), nets[1](x))
    image = Image.fromarray((x[0].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).byte().numpy())

    def change(f):   # over 400 draws: the pixels' mean absolute change, and the share of images left unchanged
        d = [np.abs(np.asarray(f(image), float) - np.asarray(image, float)).mean() for _ in seeded(4, range, 400)]
        return dict(mean_abs_change=float(np.mean(d)), unchanged=float(np.mean(np.equal(d, 0))))
    out.update(randaugment_ours=change(RandAugment(1, 10)),
               randaugment_composer=change(lambda im: cf.randaugment_image(im, severity=10, depth=1)))
    # SAM (rho 0.5 at every 2nd step, as Composer counts) then SGDW, 6 steps: ours against SAMOptimizer(its SGDW)
    data, nets = x.flatten(1)[:, :5], [seeded(5, torch.nn.Linear, 5, 4) for _ in range(2)]
    opts = [ours.DecoupledSGDW(nets[0].parameters(), 0.5, momentum=0.875, weight_decay=5e-4), SAMOptimizer(
        optim.DecoupledSGDW(nets[1].parameters(), 0.5, momentum=0.875, weight_decay=5e-4), rho=0.5, interval=2)]

    def closure(i, **_):     # Composer's SAM passes ddp_sync and loss_dict
        opts[i].zero_grad()
        loss = cross_entropy(nets[i](data), y)
        loss.backward()
        return loss
    for step in range(6):
        closure(0) if (step + 1) % 2 else ours.sam_step(nets[0].parameters(), lambda: closure(0), rho=0.5)
        opts[0].step(), opts[1].step(functools.partial(closure, 1))
    return dict(out, sam_step=max(gap(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters())))


def mild_checks(x, y, gap, seeded) -> dict:
    """Mild's methods that --composer's two trainers each apply their own way: BlurPool on resnet_cpu, the
    label-smoothed BCE (ours in one function; Composer's LabelSmoothing then its BCE), and the progressive resize
    of the 44 px crops (the sides where Composer's differs: its scale factor gives floor(44 x side / 44) px)."""
    from composer import functional as cf
    from composer.loss import binary_cross_entropy_with_logits

    from resnet import algorithms as ours
    from resnet.model import initialise, resnet_cpu

    nets = [seeded(6, resnet_cpu, 4) for _ in range(2)]
    initialise(nets[0], 4, log_bias_init=True)
    nets[1].load_state_dict(nets[0].state_dict())
    ours.apply_blurpool(nets[0]), cf.apply_blurpool(nets[1])
    logits = x[:, 0, 0, :4]
    return dict(apply_blurpool=gap(nets[0].eval()(x), nets[1].eval()(x)),
                label_smoothed_bce=gap(ours.label_smoothed_bce(logits, y, 0.08),
                                       binary_cross_entropy_with_logits(logits, cf.smooth_labels(logits, y, 0.08))),
                resize_sides_that_differ=[side for side in range(22, 45) if ours.resize_batch(x, side).shape
                                          != cf.resize_batch(x, y, side / 44)[0].shape])
