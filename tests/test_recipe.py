"""The recipe core (Recipe, Plan, learning-rate schedule, the schedule command) against the formulas and
tables of the recipe (docs/RECIPE.md)."""
import json
import subprocess
import sys

import pytest

from resnet.recipe import MILD, Plan, lr_factor

LR_AT_EVEN_EPOCHS = [0, .512, 1.024, 1.536, 2.048, 1.998, 1.852, 1.626, 1.340, 1.024, .708, .422, .196, .050, 0]
RESOLUTIONS = [88] * 12 + [96, 104, 112, 116, 124, 132, 140, 148, 156, 164, 172] + [176] * 5


def schedule_json(*args):
    out = subprocess.run([sys.executable, "-m", "resnet.cli", "schedule", *args, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_schedule_command_reproduces_recipe_tables():
    plan = schedule_json("--recipe", "mild", "--epochs", "28", "--steps-per-epoch", "625")
    epochs = plan["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(28))
    for even, lr in zip(range(0, 28, 2), LR_AT_EVEN_EPOCHS):
        assert round(epochs[even]["lr"], 3) == pytest.approx(lr, abs=1e-9), even
    assert [e["resolution"] for e in epochs] == RESOLUTIONS
    assert [e["epoch"] for e in epochs if e["eval"]] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]


def test_schedule_defaults_to_imagenet_steps_and_text_output():
    assert schedule_json("--recipe", "mild")["steps_per_epoch"] == 625
    text = subprocess.run([sys.executable, "-m", "resnet.cli", "schedule"], check=True, capture_output=True,
                          text=True).stdout
    assert "2.048" in text and " 176" in text


def test_lr_is_zero_at_the_last_step_and_peak_after_warmup():
    assert lr_factor(5000, 5000, 17500) == 1.0
    assert lr_factor(17500, 5000, 17500) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2500, 5000, 17500) == 0.5


def test_plan_derives_from_data_and_machine():
    imagenet = Plan(MILD, num_classes=1000, train_samples=1_281_167, eval_samples=50_000, world_size=8)
    assert (imagenet.steps_per_epoch, imagenet.per_device_batch, imagenet.warmup_steps) == (625, 256, 5000)
    tiny = Plan(MILD.replace(global_batch_size=64, epochs=10), num_classes=10, train_samples=3200,
                eval_samples=1000, world_size=2)
    assert (tiny.steps_per_epoch, tiny.per_device_batch, tiny.total_steps) == (50, 32, 500)
    with pytest.raises(SystemExit, match="not divisible"):
        Plan(MILD, 10, 10_000, 100, world_size=3).check()
