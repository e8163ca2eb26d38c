"""Data: synthetic sets (synth), image folders (folders), FFCV files (prepare) and the loaders (loaders)."""
import sys


def import_ffcv():
    """Import FFCV 1.0.2 without two costs of its own at import, keeping what the trainer set:
    - its pipeline compiler sets torch's thread count to 1: restored to what it was;
    - fields/rgb_image.py builds a numba typed Dict of two constants (IMAGE_MODES) that only Python code reads:
      compiling that Dict takes ~4.5 s of every process that imports FFCV; a plain dict answers the same."""
    if "ffcv.fields.rgb_image" in sys.modules:
        return
    import numba.typed
    import torch

    threads, typed_dict = torch.get_num_threads(), vars(numba.typed).get("Dict")
    numba.typed.Dict = dict
    try:
        import ffcv.fields.rgb_image  # noqa: F401  (ffcv/__init__ imports the loader and the writer too)
    finally:
        if typed_dict is None:
            del numba.typed.Dict  # numba.typed's lazy attribute again
        else:
            numba.typed.Dict = typed_dict
        torch.set_num_threads(threads)
