"""The methods Medium and Hot add (docs/RECIPE.md section 12), each against its definition: MixUp's mixing and soft
targets through the label-smoothed BCE, SAM's two-pass update and its plain steps, ColOut's rows and columns,
stochastic depth's drop rate per block and identity in eval, RandAugment on training images only (torchvision and
DALI's CPU backend, FFCV refusing it); and Medium/Hot runs end to end: a compliant log, a resume that matches."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compliance.check import check_log
from resnet.algorithms import colout_batch, label_smoothed_bce, mixup_batch, sam_step
from resnet.algorithms.sam import sam_ascent
from resnet.errors import SettingError
from resnet.recipe import MILD, Plan
from tests.conftest import REPO, cli, events, no_jit, run_stop
from tests.test_train import TINY, final_weights


def _mixup_draw(seed, n=8, alpha=0.2):
    """MixUp on a batch whose labels are all different, so that lambda and the permutation can be read back from
    the soft targets: targets = (1 - lambda) I + lambda P."""
    torch.manual_seed(seed)
    images = torch.randn(n, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    mixed, targets = mixup_batch(images, torch.arange(n), num_classes=n, alpha=alpha)
    off = targets - torch.diag(torch.diag(targets))
    partner = torch.where(off.amax(1) > 0, off.argmax(1), torch.arange(n))
    lam = off.amax().item()
    return images, mixed, targets, partner, lam


def test_mixup_blends_each_image_and_its_one_hot_target_with_one_partner_by_one_lambda():
    for seed in range(5):
        images, mixed, targets, partner, lam = _mixup_draw(seed)
        assert 0 <= lam <= 0.5                                       # lambda = min(b, 1 - b)
        assert sorted(partner.tolist()) == list(range(8))            # a permutation of the batch
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert torch.allclose(targets, (1 - lam) * torch.eye(8) + lam * torch.eye(8)[partner])
        assert torch.allclose(mixed, (1 - lam) * images + lam * images[partner], atol=1e-6)
        assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_mixup_lambda_follows_the_folded_beta_distribution():
    lams = np.array([_mixup_draw(seed, n=8, alpha=0.2)[-1] for seed in range(400)])
    b = np.random.default_rng(0).beta(0.2, 0.2, 200_000)
    expected = np.minimum(b, 1 - b).mean()
    assert abs(lams.mean() - expected) < 4 * np.minimum(b, 1 - b).std() / np.sqrt(len(lams))


def test_mixup_alpha_zero_is_no_mixing_and_a_negative_alpha_is_refused():
    images = torch.randn(4, 3, 2, 2)
    mixed, targets = mixup_batch(images, torch.tensor([0, 1, 2, 0]), num_classes=3, alpha=0)
    assert torch.equal(mixed, images) and torch.equal(targets, F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float())
    with pytest.raises(ValueError, match="alpha"):
        mixup_batch(images, torch.tensor([0, 1, 2, 0]), num_classes=3, alpha=-1)


def test_bce_smooths_soft_targets_like_labels():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    one_hot = F.one_hot(labels, 5).float()
    assert torch.allclose(label_smoothed_bce(logits, one_hot, 0.1), label_smoothed_bce(logits, labels, 0.1))
    soft = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    smoothed = soft * 0.9 + 0.1 / 5
    expected = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="sum") / 6
    assert torch.allclose(label_smoothed_bce(logits, soft, 0.1), expected)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def test_sam_step_is_the_two_pass_update_of_its_definition():
    """w' = w - lr * grad L(w + e), e = rho * g / (||g|| + eps), g = grad L(w); the returned loss is L(w)."""
    x, y = torch.randn(8, 5), torch.randint(3, (8,))
    net, ref = _tiny_net(), _tiny_net()
    w = [p.detach().clone() for p in ref.parameters()]
    loss_at_w = F.cross_entropy(ref(x), y)
    g = torch.autograd.grad(loss_at_w, list(ref.parameters()))
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p.add_(0.5 * gi / (norm + 1e-12))
    g2 = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))

    def closure():
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = sam_step(net.parameters(), closure, rho=0.5)
    optimizer.step()
    assert torch.allclose(loss, loss_at_w)
    for p, wi, g2i in zip(net.parameters(), w, g2):
        assert torch.allclose(p, wi - 0.1 * g2i, atol=1e-7)


def test_sam_divides_out_the_loss_scale_and_climbs_nowhere_on_a_non_finite_gradient():
    x, y = torch.randn(8, 5), torch.randint(3, (8,))
    plain, scaled = _tiny_net(), _tiny_net()

    def closure_of(net, scale):
        def closure():
            loss = F.cross_entropy(net(x), y)
            (loss * scale).backward()
            return loss
        return closure

    sam_step(plain.parameters(), closure_of(plain, 1.0), rho=0.5)
    sam_step(scaled.parameters(), closure_of(scaled, 1024.0), rho=0.5, grad_scale=torch.tensor(1024.0))
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b) and torch.allclose(a.grad * 1024, b.grad, rtol=1e-5)
    net = _tiny_net()
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.full_like(p, float("inf"))
    sam_ascent(net.parameters(), rho=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _training(recipe, seed=0):
    from resnet import train

    recipe = recipe.replace(arch="resnet_cpu", epochs=2, eval_every_epochs=1, train_crop_px=16, precision="fp32",
                            global_batch_size=8)
    torch.manual_seed(seed)
    return train.build_training(Plan(recipe, num_classes=4, train_samples=32, eval_samples=8, world_size=1),
                                torch.device("cpu"))


def test_sam_runs_every_kth_step_and_the_steps_between_are_the_plain_step():
    sam, plain = _training(MILD.replace(sam_rho=0.5, sam_every_steps=3)), _training(MILD)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(4, (8,), generator=g)) for _ in range(3)]
    for step, (images, labels) in enumerate(batches):
        sam.step_fn(sam, images, labels, 16)
        plain.step_fn(plain, images, labels, 16)
        same = all(torch.equal(a, b) for a, b in zip(sam.model.state_dict().values(),
                                                     plain.model.state_dict().values()))
        assert same == (step < 2), step            # Composer: SAM at steps whose number + 1 is a multiple of 3


def test_colout_keeps_the_same_rows_and_columns_of_every_image_in_order():
    h, w = 40, 20
    coords = (torch.arange(h).view(h, 1) * 1000 + torch.arange(w).view(1, w)).float()
    images = (coords + torch.arange(6).view(6, 1, 1, 1) * 10 ** 6).expand(6, 3, h, w)
    images = images.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    out = colout_batch(images, p_row=0.05, p_col=0.15)
    assert out.shape == (6, 3, int(0.95 * h), int(0.85 * w))
    assert out.is_contiguous(memory_format=torch.channels_last)
    rows, cols = (out[0, 0, :, 0] // 1000).long(), (out[0, 0, 0, :] % 1000).long()
    assert torch.all(rows[1:] > rows[:-1]) and torch.all(cols[1:] > cols[:-1])     # kept in order, no repeats
    expected = (rows.view(-1, 1) * 1000 + cols.view(1, -1)).float()
    assert torch.equal(out - torch.arange(6).view(6, 1, 1, 1) * 10 ** 6, expected.expand_as(out))
    torch.manual_seed(1)
    assert not torch.equal(colout_batch(images, 0.05, 0.15), out)                   # a new draw per batch


def test_stochastic_depth_drops_each_block_at_its_linear_rate_per_sample_and_is_the_identity_in_eval():
    from torchvision.models import resnet50
    from torchvision.ops import StochasticDepth

    from resnet.model import SmallInputResNet, apply_stochastic_depth

    rates = [m.p for m in apply_stochastic_depth(resnet50(), 0.1).modules() if isinstance(m, StochasticDepth)]
    assert rates == pytest.approx([0.1 * i / 16 for i in range(1, 17)])            # 16 bottlenecks, linear
    plain = SmallInputResNet(num_classes=4)
    model = apply_stochastic_depth(copy.deepcopy(plain), 0.8)                       # 4 blocks: 0.2, 0.4, 0.6, 0.8
    x = torch.randn(4000, 16, 4, 4)
    torch.manual_seed(0)
    blocks = [(getattr(model, f"layer{k}")[0], getattr(plain, f"layer{k}")[0]) for k in range(1, 5)]
    for i, (block, reference) in enumerate(blocks, start=1):
        block.eval()
        reference.eval()
        assert torch.equal(block(x), reference(x))                                  # eval: the plain block
        block.train()
        with torch.no_grad():
            shortcut = block.downsample(x) if block.downsample is not None else x
            dropped = (block(x) == F.relu(shortcut)).flatten(1).all(1).float().mean().item()
        assert abs(dropped - 0.2 * i) < 4 * (0.2 * i * (1 - 0.2 * i) / 4000) ** 0.5, (i, dropped)
        x = reference(x)


def _spec(**kw):
    from resnet.data.loaders import LoaderSpec

    return LoaderSpec(**{**dict(batch_size=8, train_crop_px=32, crop_scale_min=0.35, eval_crop_px=32,
                                eval_resize_px=36, workers=0), **kw})


def test_randaugment_changes_training_images_only_and_ffcv_refuses_it(synth_tree):
    from PIL import Image

    from resnet.data.loaders import make_loaders
    from resnet.data.torchvision_loader import RandAugment, train_transform

    def first_val_batch(spec):
        _, val, _ = make_loaders(synth_tree, spec, loader="torchvision")
        return next(iter(val))[0]

    assert torch.equal(first_val_batch(_spec(randaugment=(1, 10))), first_val_batch(_spec()))
    steps = [type(t) for t in train_transform(_spec(randaugment=(1, 10))).transforms]
    assert RandAugment in steps and RandAugment not in [type(t) for t in train_transform(_spec()).transforms]
    augment = RandAugment(1, 10)
    assert [t.magnitude for t in augment.by_magnitude] == list(range(11))   # magnitude drawn in [0, 10] of 10
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    changed = sum(not np.array_equal(np.asarray(augment(image)), np.asarray(image)) for _ in range(50))
    assert changed >= 35                               # identity is 1 of 14 operations, magnitude 0 is 1 of 11
    refused = "LOADER=ffcv: the recipe's RandAugment needs .*; set LOADER=dali or LOADER=torchvision"
    with pytest.raises(SettingError, match=refused):
        _spec(randaugment=(1, 10), workers=1).check("ffcv")


def test_dali_randaugment_on_the_cpu_backend(tmp_path):
    """DALI's conditionals need the pipeline's source, hence a script file."""
    script = tmp_path / "ra.py"
    script.write_text(
        "import numpy as np\n"
        "from nvidia.dali import fn, pipeline_def\n"
        "from resnet.data.dali_augment import rand_augment\n"
        "imgs = [np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8) for i in range(16)]\n"
        "@pipeline_def(batch_size=16, num_threads=1, device_id=None, seed=3, enable_conditionals=True)\n"
        "def pipe():\n"
        "    x = fn.external_source(source=lambda: imgs, batch=True, layout='HWC')\n"
        "    return x, rand_augment(x, 1, 10, 24)\n"
        "p = pipe()\n"
        "p.build()\n"
        "a, b = p.run()\n"
        "out = [np.array(b[i]) for i in range(16)]\n"
        "assert all(o.shape == (24, 24, 3) and o.dtype == np.uint8 for o in out)\n"
        "print(sum(not np.array_equal(np.array(a[i]), out[i]) for i in range(16)))\n")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 8          # most of 16 images changed (identity is 1 of 14 operations)


def test_the_dali_backend_augments_training_images_only(synth_tree):
    """RandAugment inside the DALI loader's own pipeline (LOADER=dali, CPU operators): the same seed's first
    training batch changes, the validation batch does not; decode-to-side is refused with it."""
    from resnet.data.loaders import make_loaders

    def first_batches(spec):
        train, val, _ = make_loaders(synth_tree, spec, loader="dali")
        try:
            train.set_epoch(0)
            return next(iter(train))[0], next(iter(val))[0]
        finally:
            train.close()
            val.close()

    (plain_train, plain_val), (ra_train, ra_val) = (first_batches(_spec(workers=1, randaugment=ra))
                                                    for ra in ((), (1, 10)))
    assert torch.equal(plain_val, ra_val)
    assert (plain_train != ra_train).flatten(1).any(1).sum() >= 4      # most of 8 images (identity: 1 of 14 ops)
    with pytest.raises(SettingError, match="DECODE_TO_SIDE=1: RandAugment"):
        _spec(workers=1, randaugment=(1, 10), train_sides=(32, 32)).check("dali")


HOT_TINY = [*TINY[2:], "--arch", "resnet_cpu", "--recipe", "hot", "--loader", "torchvision", "--workers", "0",
            "--epochs", "2", "--eval-every-epochs", "2", "--target-accuracy", "1.0"]


@pytest.mark.parametrize("recipe", ["medium", "hot"])
def test_a_tiny_medium_or_hot_run_logs_compliantly(synth_tree, tmp_path, recipe):
    log = tmp_path / "result_0.txt"
    args = [*TINY[2:], "--arch", "resnet_cpu", "--recipe", recipe, "--loader", "torchvision", "--workers", "0",
            "--epochs", "2", "--eval-every-epochs", "1", "--target-accuracy", "1.0", "--seed", "3"]
    out = cli("train", *args, "--data", synth_tree, "--log-file", log, check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    fields = next(e for e in events(log) if e["key"] == "recipe_fields")["value"]
    assert fields["name"] == recipe and fields["sam_rho"] == 0.5
    ok, problems = check_log(log, ruleset="4.0.0")
    assert ok, problems


def test_a_stopped_hot_run_resumes_to_the_uninterrupted_weights(synth_tree, tmp_path):
    """SAM, MixUp, ColOut, stochastic depth and RandAugment all draw: a run stopped by SIGTERM wherever it is after
    its first checkpoint, then resumed, ends with the weights of the run that never stopped."""
    import signal
    import subprocess
    import sys

    common = [*HOT_TINY, "--data", synth_tree, "--seed", "11"]
    cli("train", *common, "--checkpoint-dir", tmp_path / "straight", "--log-file", tmp_path / "a.txt", check=False)
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, common), "--checkpoint-dir",
                             resumed, "--log-file", tmp_path / "b.txt"], cwd=REPO, env=no_jit(),
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:                       # the first epoch's line comes after its checkpoint is written
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 4, err
    assert run_stop(tmp_path / "b.txt")["metadata"]["status"] == "aborted"
    out = cli("train", *common, "--checkpoint-dir", resumed, "--resume", "--log-file", tmp_path / "c.txt",
              check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    a, b = final_weights(tmp_path / "straight"), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hot_on_ffcv_is_refused_in_one_line_before_the_log_is_claimed(ffcv_data, tmp_path):
    from resnet.launch import env_to_flags

    assert env_to_flags({"RECIPE": "hot", "DATADIR": "/d"})[:2] == ["--recipe", "hot"]   # the launchers pass it on
    out = cli("train", *TINY[2:], "--recipe", "hot", "--data", ffcv_data, "--log-file", tmp_path / "r.txt",
              check=False)
    assert out.returncode == 1 and not (tmp_path / "r.txt").exists()
    assert out.stderr.strip().splitlines()[-1] == (
        "mlperf-resnet: error: LOADER=ffcv: the recipe's RandAugment needs a loader that augments the decoded images; "
        "set LOADER=dali or LOADER=torchvision")


def test_sam_under_ddp_keeps_the_replicas_identical(synth_tree, tmp_path):
    """Each device climbs its own e(w) (the first pass is not all-reduced); coming back must give every replica the
    same w again (a subtraction would not: (w + e) - e is not w in floating point). Two gloo processes, Hot."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "resnet.train", *HOT_TINY, "--batch-size", "8", "--device", "cpu",
                          "--data", str(synth_tree), "--seed", "3", "--log-file", str(tmp_path / "r.txt")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert "replicas diverged" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("replicas: identical across 2 ranks") == 2, out.stderr[-3000:]
    assert run_stop(tmp_path / "r.txt")["metadata"]["status"] == "aborted"      # target 1.0: the epochs ran out
