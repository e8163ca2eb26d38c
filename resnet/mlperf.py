"""A thin wrapper over mlperf_logging.mllog: one log file per run, written by global rank 0 only."""
import logging
import os
from pathlib import Path

from mlperf_logging.mllog.mllog import MLLogger
from mlperf_logging.mllog import constants

__all__ = ["RunLog", "claim_result_file", "constants"]


def claim_result_file(results_dir: Path) -> Path:
    """Create the next free `result_N.txt` atomically (O_EXCL): an existing log is never overwritten,
    even by runs started at the same moment."""
    results_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        path = results_dir / f"result_{n}.txt"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


class RunLog:
    """MLPerf events of one run. `path=None` (ranks other than 0) makes every call a no-op."""

    def __init__(self, path: Path | None):
        self.path = path
        self._mllog = None
        if path is None:
            return
        logger = logging.getLogger(f"mlperf-resnet.{path}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(path, mode="a")
        logger.addHandler(self._handler)
        self._mllog = MLLogger(logger=logger, default_stack_offset=2, root_dir=str(Path(__file__).parents[1]))

    def event(self, key, value=None, time_ms=None, **metadata):
        if self._mllog:
            self._mllog.event(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def start(self, key, value=None, time_ms=None, **metadata):
        if self._mllog:
            self._mllog.start(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def end(self, key, value=None, time_ms=None, **metadata):
        if self._mllog:
            self._mllog.end(key=key, value=value, metadata=metadata or None, time_ms=time_ms)

    def close(self):
        if self._mllog:
            self._handler.flush()
            self._handler.close()
            self._mllog.logger.removeHandler(self._handler)
            self._mllog = None
