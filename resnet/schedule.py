"""The whole training plan, per epoch, before any GPU hour is spent: the learning rate at the start of each epoch,
its training resolution, and whether an evaluation follows it.

The EMA's interval and half-life, defined in epochs, are shown in steps and images at this batch.
Epochs are numbered as MLPerf logs them: epoch N is the one after which N epochs are complete. Every recipe
setting of `train` can be given (the same flags, from the same settings table), so a config's schedule can be
previewed: `mlperf-resnet schedule --epochs 18 --eval-every-epochs 2`.
"""
import argparse
import json
import sys

from resnet import errors, settings
from resnet.errors import SettingError
from resnet.recipe import Plan, lr_factor

NAME = "schedule"
HELP = "print the per-epoch LR, training resolution and evaluations"
IMAGENET_TRAIN = 1_281_167
# The rows that shape the schedule: the recipe, its fields and the learning rate (no data, device or output).
ROWS = [s for s in settings.SETTINGS if s.field or s.env in ("RECIPE", "LR")]


def plan_rows(recipe, steps_per_epoch: int) -> list[dict]:
    """One row per epoch; `epoch` is 1-based (the number of epochs complete when it ends)."""
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    total = recipe.epochs * steps_per_epoch
    return [dict(epoch=e + 1, lr=recipe.peak_lr * lr_factor(e * steps_per_epoch, warmup, total),
                 resolution=recipe.resolution_px(e), eval=recipe.evaluates_after(e))
            for e in range(recipe.epochs)]


def ema_facts(recipe, steps_per_epoch: int) -> dict | None:
    """The EMA at this many steps an epoch: steps and images between updates, half-life, decay per update."""
    if not recipe.ema:
        return None
    plan = Plan(recipe, num_classes=1, train_samples=steps_per_epoch * recipe.global_batch_size, eval_samples=1,
                world_size=1)
    return dict(every_steps=plan.ema_every_steps, every_images=plan.ema_every_steps * recipe.global_batch_size,
                half_life_steps=plan.ema_half_life_steps,
                half_life_images=plan.ema_half_life_steps * recipe.global_batch_size, decay=plan.ema_decay)


def methods_line(recipe) -> str:
    """The section-12 methods the recipe turns on (Medium, Hot), in one line."""
    parts = [f"MixUp alpha {recipe.mixup_alpha:g}" if recipe.mixup_alpha else "",
             f"SAM rho {recipe.sam_rho:g} every {recipe.sam_every_steps} steps" if recipe.sam_rho else "",
             f"ColOut {recipe.colout_fraction:g} of rows and columns" if recipe.colout_fraction else "",
             f"RandAugment depth {recipe.randaugment_depth}, severity {recipe.randaugment_severity}"
             if recipe.randaugment_depth else "",
             f"stochastic depth {recipe.stochastic_depth_rate:g} (linear over depth)"
             if recipe.stochastic_depth_rate else ""]
    return ", ".join(p for p in parts if p) or "none"


def add_arguments(p: argparse.ArgumentParser) -> None:
    settings.add_arguments(p, ROWS)
    p.add_argument("--steps-per-epoch", type=int,
                   help="default: ImageNet's 1,281,167 images / the global batch (625 at 2048)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    settings.read(args, ROWS)
    recipe = settings.recipe_from_args(args, world_size=1, rows=ROWS)
    settings.check_recipe(recipe)
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise SettingError(f"--steps-per-epoch: {args.steps_per_epoch} is not positive; give at least 1")
    steps = args.steps_per_epoch or IMAGENET_TRAIN // recipe.global_batch_size
    if steps < 1:
        raise SettingError(f"--global-batch-size: {recipe.global_batch_size} images make no full batch of "
                           f"ImageNet's {IMAGENET_TRAIN}; give --steps-per-epoch or a smaller batch")
    rows, ema = plan_rows(recipe, steps), ema_facts(recipe, steps)
    for warning in settings.ema_warnings(recipe):
        errors.warn(warning)
    if args.json:
        print(json.dumps(dict(recipe=recipe.name, steps_per_epoch=steps, peak_lr=recipe.peak_lr,
                              weight_decay=recipe.weight_decay, label_smoothing=recipe.label_smoothing,
                              methods=methods_line(recipe), epoch_numbering="completed epochs", ema=ema,
                              epochs=rows)))
        return 0
    evals = [r["epoch"] for r in rows if r["eval"]]
    print(f"recipe {recipe.name}: weight decay {recipe.weight_decay:g}, label smoothing {recipe.label_smoothing:g}; "
          f"methods beyond Mild's: {methods_line(recipe)}")
    print(f"{recipe.epochs} epochs x {steps} steps, peak lr {recipe.peak_lr:g}, "
          f"eval {recipe.eval_crop_px}px (resize {recipe.eval_resize_px}) in {recipe.eval_precision}, "
          f"target > {recipe.target_accuracy}")
    print(f"evaluations after {', '.join(map(str, evals))} completed epochs (every {recipe.eval_every_epochs}, "
          "and after the last)")
    if ema:
        print(f"EMA: an update every {ema['every_steps']} steps ({ema['every_images']:,} images), half-life "
              f"{ema['half_life_steps']:g} steps ({ema['half_life_images']:,.0f} images), decay {ema['decay']:.6f} "
              "per update")
    else:
        print("EMA: off (evaluations score the raw weights)")
    print(f"{'epoch':>5}  {'lr':>6}  {'px':>4}  eval after it")
    for r in rows:
        print(f"{r['epoch']:>5}  {r['lr']:6.3f}  {r['resolution']:>4}  {'yes' if r['eval'] else ''}")
    print("epoch N = the N-th epoch, after which N are complete (as MLPerf logs epoch_num); lr at its first step")
    return 0


if __name__ == "__main__":
    sys.exit(errors.main(sys.modules[__name__]))
