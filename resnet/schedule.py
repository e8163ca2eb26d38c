"""`mlperf-resnet schedule`: the whole training plan, per epoch, before any GPU hour is spent."""
import argparse
import json
import sys

from resnet.recipe import RECIPES, get_recipe, lr_factor

IMAGENET_TRAIN = 1_281_167


def plan_rows(recipe, steps_per_epoch: int) -> list[dict]:
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    total = recipe.epochs * steps_per_epoch
    return [dict(epoch=e, lr=recipe.peak_lr * lr_factor(e * steps_per_epoch, warmup, total),
                 resolution=recipe.resolution_px(e), eval=recipe.evaluates_after(e))
            for e in range(recipe.epochs)]


def register(subparsers) -> None:
    p = subparsers.add_parser("schedule", help="print the per-epoch LR, training resolution and evaluations")
    p.add_argument("--recipe", default="mild", choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--steps-per-epoch", type=int,
                   help="default: ImageNet's 1,281,167 images / the global batch (625 at 2048)")
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.recipe)
    if args.epochs is not None:
        if args.epochs < 1:
            raise SystemExit("mlperf-resnet schedule: error: --epochs must be >= 1")
        recipe = recipe.replace(epochs=args.epochs)
    if args.global_batch_size:
        recipe = recipe.replace(global_batch_size=args.global_batch_size)
    steps = args.steps_per_epoch or IMAGENET_TRAIN // recipe.global_batch_size
    if steps < 1:
        raise SystemExit("mlperf-resnet schedule: error: --steps-per-epoch must be >= 1")
    rows = plan_rows(recipe, steps)
    if args.json:
        print(json.dumps(dict(recipe=recipe.name, steps_per_epoch=steps, peak_lr=recipe.peak_lr, epochs=rows)))
        return 0
    print(f"recipe {recipe.name}: {recipe.epochs} epochs x {steps} steps, peak lr {recipe.peak_lr:g}, "
          f"eval {recipe.eval_crop_px}px (resize {recipe.eval_resize_px}), target > {recipe.target_accuracy}")
    print(f"{'epoch':>5}  {'lr':>6}  {'px':>4}  eval")
    for r in rows:
        print(f"{r['epoch']:>5}  {r['lr']:6.3f}  {r['resolution']:>4}  {'yes' if r['eval'] else ''}")
    return 0


if __name__ == "__main__":
    from resnet.cli import standalone

    sys.exit(standalone(register))
