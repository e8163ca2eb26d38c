"""mlperf-resnet: ResNet-50 with the Mosaic "Mild" recipe for MLPerf Training (open division)."""
import os

__version__ = "0.1.0"

# On one CPU (a pinned process, a container's cpuset) numba's TBB threading layer, once FFCV has used it from a
# thread, hangs the process at exit (numba#10556, oneTBB#2056: no TBB worker, a task left in another thread's
# slot). There, unless the user chose a layer, numba (read at its import, FFCV's and its children's) takes OpenMP.
if len(os.sched_getaffinity(0)) < 2:
    os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
