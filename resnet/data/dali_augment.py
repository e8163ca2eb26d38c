"""RandAugment for the DALI backend (RECIPE.md section 12), as a function of a DALI pipeline's decoded training images.

`dali_loader.py` calls `rand_augment(images, depth, severity, side)` on the cropped, flipped uint8 HWC images when
the LoaderSpec asks for RandAugment. It is DALI's own RandAugment suite (`nvidia.dali.auto_aug`: the operations
and magnitude ranges of torchvision's RandAugment, identity included) applied the way Composer applies it: each
of `depth` operations per image, chosen uniformly, at a magnitude drawn per image in [0, severity] of 10 (DALI's
`rand_augment` fixes the magnitude for the whole run, so its pieces, `select` and `signed_bin`, are used here).
Translations reach 150/331 of the side and fills are black, as torchvision's; interpolation is bilinear, as
Composer's. Runs on the CPU or GPU backend alike (the operators follow the images).
"""
MAGNITUDE_BINS = 11                 # bins 0..10: magnitude m / 10 of each operation's range, Composer's severity scale
MAX_TRANSLATE_REL = 150 / 331       # torchvision's RandAugment: 150 px of a 331 px image


def rand_augment(images, depth: int, severity: int, side: int, seed: int = -1):
    """`images`: a DALI DataNode of uint8 HWC images of side x side px. Returns the augmented DataNode."""
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import rand_augment as suites
    from nvidia.dali.auto_aug.core import select, signed_bin

    if not 0 <= severity < MAGNITUDE_BINS:
        raise ValueError(f"RandAugment severity must be in [0, {MAGNITUDE_BINS - 1}], got {severity}")
    suite = suites.get_rand_augment_suite(use_shape=True, max_translate_rel=MAX_TRANSLATE_REL)
    for _ in range(depth):
        op = fn.random.uniform(values=list(range(len(suite))), dtype=types.INT32, seed=seed)
        magnitude = fn.random.uniform(values=list(range(severity + 1)), dtype=types.INT32, seed=seed)
        images = select(suite, op, images, magnitude_bin=signed_bin(magnitude, seed=seed),
                        num_magnitude_bins=MAGNITUDE_BINS, shape=(side, side), fill_value=0,
                        interp_type=types.INTERP_LINEAR)
    return images
