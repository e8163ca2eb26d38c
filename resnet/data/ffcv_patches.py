"""Every override of FFCV 1.0.2's internals, in one place. Importing this module imports FFCV (through
`import_ffcv`): only the FFCV loader, `prepare` and the .beton checks do, and only when they run.

- `import_ffcv`: FFCV's import sets torch's thread count and compiles a numba typed Dict it never needs.
- `Normalize`: uint8 NHWC -> normalised float on the device, into FFCV's preallocated batch slots.
- `ShardOrder`: our per-rank order (`loaders.shard_order`) instead of FFCV's, which pads the validation set.
- `RankLoader`/`EpochThread`: the loader thread on the rank's GPU, its exceptions handed to the consumer, torch's
  thread count left alone.
- `Writer`: the DatasetWriter whose parent watches its workers (a bad image or a full disk ends the write at once).
"""
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


import_ffcv()

import ctypes  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from multiprocessing import Process, Queue, Value  # noqa: E402

import torch  # noqa: E402
from ffcv.loader import Loader  # noqa: E402
from ffcv.loader.epoch_iterator import EpochIterator  # noqa: E402
from ffcv.memory_allocator import MemoryAllocator  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.pipeline.operation import Operation  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

from resnet.data.loaders import normalize_nhwc, shard_order  # noqa: E402
from resnet.errors import DataError  # noqa: E402


class Normalize(Operation):
    """uint8 NHWC -> normalised `dtype`, into a buffer FFCV preallocates per batch slot (its CUDA streams reuse
    slots only once the consumer is done, so no allocation races)."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def declare_state_and_memory(self, previous_state):
        self.device = previous_state.device
        return (replace(previous_state, dtype=self.dtype),
                AllocationQuery(previous_state.shape, self.dtype, self.device))

    def generate_code(self):
        return lambda images, dst: normalize_nhwc(images, dst[: images.shape[0]])


class ShardOrder(TraversalOrder):
    """`shard_order` as an FFCV traversal order. FFCV calls the instance with the loader (see __call__)."""

    def __init__(self, rank, world_size, seed, shuffle):
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle

    def __call__(self, loader):
        TraversalOrder.__init__(self, loader)
        return self

    def sample_order(self, epoch):
        return shard_order(len(self.indices), self.rank, self.world_size, self.seed, epoch, self.shuffle)


class EpochThread(EpochIterator):
    """FFCV's per-epoch loader thread, (1) on this rank's CUDA device: FFCV 1.0.2 never sets it, so every rank's
    thread would work on GPU 0 (a context per rank there; an error on exclusive-process GPUs); (2) handing an
    exception to the consumer: FFCV's thread dies with it and the consumer's next() waits forever for a batch that
    never comes."""

    def __init__(self, loader, order, path, cuda_device):
        self.path, self.cuda_device, self.error = path, cuda_device, None
        super().__init__(loader, order)  # starts the thread

    def run(self):
        try:
            if self.cuda_device is not None:
                torch.cuda.set_device(self.cuda_device)
            super().run()
        except BaseException as e:  # noqa: BLE001 - whatever it is, the consumer must hear of it
            self.error = e
            while not self.terminate_event.is_set():  # FFCV's end-of-epoch mark wakes the consumer up
                try:
                    self.output_queue.put(None, timeout=0.5)
                    return
                except queue.Full:
                    pass

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            if self.error is None:
                raise
        e = self.error
        raise DataError(f"{self.path}: reading a batch failed in FFCV's loader thread ({type(e).__name__}: {e}); "
                        "if the file changed or was damaged since the run started, run `mlperf-resnet prepare` "
                        "again".replace("\n", " ")) from e


class RankLoader(Loader):
    """FFCV's Loader whose epochs run in EpochThread (1.0.2's __iter__ with that one class changed), leaving torch's
    thread count as the trainer set it (FFCV sets it to num_workers in Loader() and at every iter())."""

    def __init__(self, *args, cuda_device=None, **kwargs):
        self.threads, self.cuda_device, self.epoch_thread = torch.get_num_threads(), cuda_device, None
        try:
            super().__init__(*args, **kwargs)
        finally:
            torch.set_num_threads(self.threads)

    def __iter__(self):
        Compiler.set_num_threads(self.num_workers)
        torch.set_num_threads(self.threads)
        order = self.next_traversal_order()[: len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()  # compiled at the first epoch
        self.close_epoch()             # the trainer stops reading an epoch at steps_per_epoch: end its thread
        self.epoch_thread = EpochThread(self, order, self.reader.file_name, self.cuda_device)
        return self.epoch_thread

    def close_epoch(self, timeout_s: float = 5):
        """End the running epoch's thread (FFCV's own close() only asks it to stop) so nothing of it is left to
        the interpreter's exit."""
        thread, self.epoch_thread = self.epoch_thread, None
        if thread is not None:
            thread.close()
            thread.join(timeout_s)


class WorkerFailed(Exception):
    """A writer process failed: errno (0 when none applies, or prepare's mark for a bad image) and one line."""

    def __init__(self, errno_, text):
        super().__init__(text)
        self.errno, self.text = errno_, text


class Writer(DatasetWriter):
    """FFCV's DatasetWriter with a parent that watches its workers: the first failure (a bad image, a full disk, a
    worker killed for memory) ends the write within a fraction of a second. `worker(parent_pid, failures, work_fn,
    *args)` runs FFCV's work function in each process and reports its failure into `failures`."""

    def __init__(self, fname, fields, page_size, num_workers, failures, tick, worker):
        super().__init__(fname, fields, page_size=page_size, num_workers=num_workers)
        self.failures, self.tick, self.worker = failures, tick, worker  # tick(images done, total): every 0.1 s

    def _check(self, workers):
        if not self.failures.empty():
            raise WorkerFailed(*self.failures.get())
        for w in workers:
            if w.exitcode not in (None, 0):
                time.sleep(0.1)  # a worker that failed has sent its reason just before it exited
                if not self.failures.empty():
                    raise WorkerFailed(*self.failures.get())
                how = f"killed by signal {-w.exitcode}" if w.exitcode < 0 else f"exit code {w.exitcode}"
                raise WorkerFailed(0, f"a writer process ended ({how}; out of memory? try fewer --workers)")

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()  # FFCV: header and field descriptors, shared memory for the per-sample metadata
        workers = []
        try:
            todo, tables, done = Queue(), Queue(), Value(ctypes.c_uint64, 0)
            todo.cancel_join_thread()  # if the workers are stopped, the chunks left in it must not hold our exit
            for chunk in queue_content:
                todo.put(chunk)
            for _ in range(self.num_workers):
                todo.put(None)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (todo, self.metadata_sm, self.metadata_type, self.fields, allocator, done, tables,
                    *extra_worker_args)
            workers = [Process(target=self.worker, args=(os.getpid(), self.failures, work_fn, *args), daemon=True)
                       for _ in range(self.num_workers)]
            for w in workers:
                w.start()
            allocations, reported = [], 0
            while reported < len(workers):  # each worker sends its allocation table when it is done
                self._check(workers)
                self.tick(done.value, num_samples)
                try:
                    allocations.extend(tables.get(timeout=0.1))
                    reported += 1
                except queue.Empty:
                    pass
            self.finalize(allocations)
        finally:
            for w in workers:
                if w.is_alive():
                    w.kill()
                w.join()
            self.metadata_sm.close()
            self.metadata_sm.unlink()
