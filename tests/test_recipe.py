"""The recipe core (Recipe, Plan, learning-rate schedule, evaluation cadence, the schedule command) against the
formulas and tables of the recipe (docs/RECIPE.md) and MosaicML's submitted run."""
import contextlib
import io
import json
import subprocess
import sys

import pytest

import resnet.schedule
from resnet import errors
from resnet.errors import SettingError
from resnet.recipe import BASELINE, MILD, RECIPES, Plan, get_recipe, lr_factor

LR_AT_EVEN_EPOCHS = [0, .512, 1.024, 1.536, 2.048, 1.998, 1.852, 1.626, 1.340, 1.024, .708, .422, .196, .050, 0]
RESOLUTIONS = [88] * 12 + [96, 104, 112, 116, 124, 132, 140, 148, 156, 164, 172] + [176] * 5
# Composer evaluates when the number of completed epochs is a multiple of the interval, and at the end.
MILD_EVALS = [3, 6, 9, 12, 15, 18, 21, 24, 27, 28]
BASELINE_EVALS = list(range(4, 89, 4)) + [90]


def schedule(*args, check=True, fresh=False):
    """`python -m resnet.schedule ARGS`; unless `fresh`, in this process (errors.main, what its __main__ runs): the
    command reads no data and starts nothing, so a fresh interpreter would only add torch's import to each call."""
    if fresh:
        return subprocess.run([sys.executable, "-m", "resnet.schedule", *args], check=check,
                              capture_output=True, text=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = errors.main(resnet.schedule, list(args))
    out = subprocess.CompletedProcess(["resnet.schedule", *args], code, stdout.getvalue(), stderr.getvalue())
    if check:
        out.check_returncode()
    return out


def schedule_json(*args):
    return json.loads(schedule(*args, "--json").stdout)


def test_schedule_command_reproduces_recipe_tables():
    plan = schedule_json("--recipe", "mild", "--epochs", "28", "--steps-per-epoch", "625")
    epochs = plan["epochs"]
    assert plan["epoch_numbering"] == "completed epochs"
    assert [e["epoch"] for e in epochs] == list(range(1, 29))
    for even, lr in zip(range(0, 28, 2), LR_AT_EVEN_EPOCHS):
        assert round(epochs[even]["lr"], 3) == pytest.approx(lr, abs=1e-9), even
    assert [e["resolution"] for e in epochs] == RESOLUTIONS
    assert [e["epoch"] for e in epochs if e["eval"]] == MILD_EVALS
    baseline = schedule_json("--recipe", "baseline")["epochs"]
    assert [e["epoch"] for e in baseline if e["eval"]] == BASELINE_EVALS


def test_schedule_defaults_to_imagenet_steps_and_text_output():
    assert schedule_json("--recipe", "mild")["steps_per_epoch"] == 625
    text = schedule(fresh=True).stdout                 # as a user runs it
    assert "2.048" in text and " 176" in text
    assert "evaluations after 3, 6, 9, 12, 15, 18, 21, 24, 27, 28 completed epochs" in text
    assert "as MLPerf logs epoch_num" in text and "in fp32" in text
    assert ("EMA: an update every 20 steps (40,960 images), half-life 100 steps (204,800 images), decay 0.870551 "
            "per update") in text


def test_schedule_shows_the_ema_at_the_given_steps_and_warns_about_a_bad_one():
    proxy = schedule_json("--global-batch-size", "64", "--steps-per-epoch", "20")["ema"]
    assert (proxy["every_steps"], proxy["every_images"], proxy["half_life_images"]) == (1, 64, pytest.approx(204.8))
    assert schedule_json("--recipe", "baseline")["ema"] is None
    bad = schedule("--epochs", "6", "--eval-every-epochs", "2", "--warmup-epochs", "1", "--ema-every-epochs", "2")
    assert "EMA: an update every 1250 steps (2,560,000 images)" in bad.stdout
    assert bad.stderr.startswith("mlperf-resnet: warning: --ema-every-epochs (EMA_EVERY_EPOCHS): 2.0 epochs between "
                                 "updates make 3 EMA update(s) in 6 epochs"), bad.stderr


def test_schedule_takes_the_recipe_settings_of_train():
    plan = schedule_json("--epochs", "18", "--eval-every-epochs", "2", "--resize-initial-scale", "1",
                         "--global-batch-size", "1024", "--lr", "1.5")
    assert [e["epoch"] for e in plan["epochs"] if e["eval"]] == list(range(2, 19, 2))
    assert {e["resolution"] for e in plan["epochs"]} == {176}
    assert (plan["steps_per_epoch"], plan["peak_lr"]) == (1_281_167 // 1024, 1.5)


@pytest.mark.parametrize("args,message", [
    (["--recipe", "spicy"], f"--recipe (RECIPE): 'spicy' is not one of {', '.join(RECIPES)}"),
    (["--epochs", "0"], "--epochs (EPOCHS): 0 is not in [1, inf)"),
    (["--epochs", "2"], "--epochs (EPOCHS): 2 epochs is fewer than the evaluation interval 3"),
    (["--lr", "inf"], "--lr (LR): inf is not a finite number"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch: 0 is not positive"),
    (["--ema-every-epochs", "30"], "--ema-every-epochs (EMA_EVERY_EPOCHS): 30.0 epochs between EMA updates is more "
                                   "than the 28 epochs of the run; use the recipe's 0.032 or set EMA=0"),
    (["--ema-half-life-epochs", "0"], "--ema-half-life-epochs (EMA_HALF_LIFE_EPOCHS): 0.0 is not in (0, inf)"),
])
def test_schedule_rejects_bad_settings_in_one_line(args, message):
    out = schedule(*args, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"mlperf-resnet: error: {message}") and out.stderr.count("\n") == 1, out.stderr


def test_lr_is_zero_at_the_last_step_and_peak_after_warmup():
    assert lr_factor(5000, 5000, 17500) == 1.0
    assert lr_factor(17500, 5000, 17500) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2500, 5000, 17500) == 0.5


def test_evaluation_cadence_follows_composer():
    """Evaluate after every k completed epochs, and after the last as a safety net (0-based epoch = completed - 1)."""
    assert [e + 1 for e in range(MILD.epochs) if MILD.evaluates_after(e)] == MILD_EVALS
    assert [e + 1 for e in range(BASELINE.epochs) if BASELINE.evaluates_after(e)] == BASELINE_EVALS
    divisible = MILD.replace(epochs=12, eval_every_epochs=4)
    assert [e + 1 for e in range(12) if divisible.evaluates_after(e)] == [4, 8, 12]


def test_block_epochs_run_through_the_next_evaluation():
    assert [MILD.block_epochs(first) for first in (0, 3, 24, 27)] == [3, 3, 3, 1]
    assert MILD.block_epochs(1) == 2                     # a resumed run starts mid-block
    assert [BASELINE.block_epochs(first) for first in (0, 84, 88)] == [4, 4, 2]
    for recipe in (MILD, BASELINE):                      # blocks tile the run, each ending on an evaluation
        first, blocks = 0, []
        while first < recipe.epochs:
            blocks.append(first + recipe.block_epochs(first))
            first = blocks[-1]
        assert blocks == (MILD_EVALS if recipe is MILD else BASELINE_EVALS)


def test_plan_derives_from_data_and_machine():
    imagenet = Plan(MILD, num_classes=1000, train_samples=1_281_167, eval_samples=50_000, world_size=8)
    assert (imagenet.steps_per_epoch, imagenet.per_device_batch, imagenet.warmup_steps) == (625, 256, 5000)
    tiny = Plan(MILD.replace(global_batch_size=64, epochs=10), num_classes=10, train_samples=3200,
                eval_samples=1000, world_size=2)
    assert (tiny.steps_per_epoch, tiny.per_device_batch, tiny.total_steps) == (50, 32, 500)
    with pytest.raises(SettingError, match="not divisible"):
        Plan(MILD, 10, 10_000, 100, world_size=3).check()
    with pytest.raises(SettingError, match="^BATCHSIZE: 100 training images make no full batch of 2048; "):
        Plan(MILD, 10, 100, 100, world_size=1).check()


def test_plan_refuses_an_ema_that_never_updates():
    """An update interval longer than the run: every evaluation would score the raw weights."""
    plan = Plan(MILD.replace(epochs=3, eval_every_epochs=3, ema_every_epochs=3.4), 10, 6400, 100, world_size=1)
    with pytest.raises(SettingError, match=r"^EMA_EVERY_EPOCHS: an EMA update every 10 steps is more than the "
                                           r"whole run trains \(9 steps\); lower EMA_EVERY_EPOCHS"):
        plan.check()
    Plan(MILD.replace(epochs=3, eval_every_epochs=3, ema=False, ema_every_epochs=3.4), 10, 6400, 100, 1).check()


def test_recipe_defaults_are_the_submitted_ones():
    assert (MILD.eval_precision, MILD.crop_scale_min, MILD.target_accuracy) == ("fp32", 0.08, 0.759)
    assert (BASELINE.eval_precision, BASELINE.crop_scale_min) == ("fp32", 0.08)
    assert get_recipe("baseline") is BASELINE
    with pytest.raises(SettingError, match=rf"^RECIPE: unknown recipe 'spicy'; use one of {', '.join(RECIPES)}$"):
        get_recipe("spicy")


def test_medium_and_hot_differ_from_mild_exactly_by_their_published_table():
    """docs/RECIPE.md section 12: Composer v0.11's recipe YAMLs, epochs of mosaicml/examples."""
    import dataclasses

    from resnet.recipe import HOT, MEDIUM

    def changes(recipe):
        return {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
                if getattr(recipe, f.name) != getattr(MILD, f.name)}

    assert changes(MEDIUM) == dict(name="medium", epochs=135, label_smoothing=0.1, mixup_alpha=0.2, sam_rho=0.5,
                                   sam_every_steps=10)
    assert changes(HOT) == dict(name="hot", epochs=270, weight_decay=3e-4, label_smoothing=0.13,
                                resize_initial_scale=0.6, resize_delay=0.2, mixup_alpha=0.25, sam_rho=0.5,
                                sam_every_steps=5, colout_fraction=0.05, randaugment_depth=1, stochastic_depth_rate=0.1)
    assert HOT.randaugment_severity == 10 and HOT.resize_finetune == 0.2
    assert not (MILD.mixup_alpha or MILD.sam_rho or MILD.colout_fraction or MILD.randaugment_depth
                or MILD.stochastic_depth_rate)                   # Mild (and `make benchmark`) unchanged
    assert get_recipe("medium") is MEDIUM and get_recipe("hot") is HOT


def test_schedule_shows_medium_and_hot():
    hot = schedule_json("--recipe", "hot")
    assert (hot["recipe"], len(hot["epochs"]), hot["weight_decay"], hot["label_smoothing"]) == ("hot", 270, 3e-4, 0.13)
    assert hot["methods"] == ("MixUp alpha 0.25, SAM rho 0.5 every 5 steps, ColOut 0.05 of rows and columns, "
                              "RandAugment depth 1, severity 10, stochastic depth 0.1 (linear over depth)")
    # initial scale 0.6 of 176 for the first 20% of 270 epochs, 176 over the last 20%
    sides = [e["resolution"] for e in hot["epochs"]]
    assert sides[:54] == [104] * 54 and sides[-54:] == [176] * 54
    text = schedule("--recipe", "medium").stdout
    assert "recipe medium: weight decay 0.0005, label smoothing 0.1; methods beyond Mild's: MixUp alpha 0.2, SAM rho " \
           "0.5 every 10 steps" in text
    assert "135 epochs x 625 steps" in text
    assert "methods beyond Mild's: none" in schedule("--recipe", "mild").stdout
