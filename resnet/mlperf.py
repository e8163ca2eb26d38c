"""A thin wrapper over mlperf_logging.mllog: one log file per run, written by global rank 0 only, and the
run's init and hyper-parameter events in one place."""
import dataclasses
import errno
import fcntl
import logging
import os
from pathlib import Path

from mlperf_logging.mllog import constants
from mlperf_logging.mllog.mllog import MLLogger

from resnet.errors import Error

__all__ = ["RunLog", "LogWriteError", "claim_result_file", "constants", "log_init", "log_hyperparameters"]
C = constants


class LogWriteError(Error):
    """The MLPerf log cannot be written (a full disk): the run stops rather than train on unrecorded."""


def claim_result_file(results_dir: Path, create: bool = True) -> Path:
    """Create the next free `result_N.txt` atomically (O_EXCL): an existing log is never overwritten,
    even by runs started at the same moment. The trainer and the launcher both claim through this.
    create=False: only the name it would take (a dry run creates nothing)."""
    if create:
        results_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        path = results_dir / f"result_{n}.txt"
        if not create:
            if not path.exists() and not path.is_symlink():
                return path
            n += 1
            continue
        try:  # O_EXCL also refuses a symbolic link, dangling or not
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


def open_exclusive(path: Path):
    """The result log `path` opened for this run alone: created if missing (with its folder), never through a
    symbolic link, empty (a launcher may have claimed it by creating it), and held with an exclusive lock for
    the run, so that a second run given the same file is refused instead of interleaving its lines."""
    fix = "result logs are never shared or overwritten; give a new --log-file or leave it out"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise LogWriteError(f"--log-file {path}: cannot open ({why}); {fix}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LogWriteError(f"--log-file {path}: another run is writing it; {fix}") from None
    if os.fstat(fd).st_size:
        os.close(fd)
        raise LogWriteError(f"--log-file {path}: already holds a log; {fix}")
    return os.fdopen(fd, "a", encoding="utf-8")


class _Handler(logging.StreamHandler):
    """The log file's handler, writing whole lines only and failing loudly: a line the disk cannot take is cut
    back off (the log ends at its last whole line) and raises LogWriteError (logging's default would print a
    traceback per lost line and go on)."""

    def __init__(self, path: Path):
        super().__init__(open_exclusive(path))
        self.path = path
        self.whole = os.fstat(self.stream.fileno()).st_size    # bytes of whole lines written

    def emit(self, record):
        line, fd = (self.format(record) + "\n").encode(), self.stream.fileno()
        try:
            while line:
                line = line[os.write(fd, line):]
        except OSError as e:
            try:
                os.ftruncate(fd, self.whole)
            except OSError:
                pass
            raise LogWriteError(f"{self.path}: cannot write the MLPerf log ({e.strerror}); free space under "
                                "LOGDIR or choose another results folder, then run again") from None
        self.whole = os.lseek(fd, 0, os.SEEK_CUR)


class RunLog:
    """MLPerf events of one run. `path=None` (ranks other than 0) makes every call a no-op."""

    def __init__(self, path: Path | None):
        self.path = path
        self._mllog = None
        self.stopped = False     # whether a run_stop line was written (what an error message may claim)
        if path is None:
            return
        logger = logging.getLogger(f"mlperf-resnet.{path}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        self._handler = _Handler(path)
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
            self.stopped = self.stopped or key == C.RUN_STOP

    def close(self):
        if self._mllog:
            self._mllog.logger.removeHandler(self._handler)
            self._mllog = None
            try:
                self._handler.stream.close()   # releases the lock
            except OSError:
                pass
            self._handler.close()


def log_init(log: RunLog, *, org: str, platform: str, status: str, cache_cleared: bool, init_start_ms: int):
    """cache_clear, init_start (when the process started) and the submission events."""
    # The launcher dropped the cache before this process started: both events carry the process's start time.
    log.event(C.CACHE_CLEAR, value=bool(cache_cleared), time_ms=init_start_ms)
    log.start(C.INIT_START, time_ms=init_start_ms)
    for key, value in ((C.SUBMISSION_BENCHMARK, "resnet"), (C.SUBMISSION_DIVISION, "open"),
                       (C.SUBMISSION_ORG, org), (C.SUBMISSION_PLATFORM, platform), (C.SUBMISSION_STATUS, status)):
        log.event(key, value)


def log_hyperparameters(log: RunLog, recipe, plan, seed: int, optimizer_name: str) -> None:
    """The seed, the keys MLPerf asks for (the optimiser under the name the Training gives it), and the whole
    resolved recipe (so a log says what ran)."""
    log.event(C.SEED, seed)
    for key, value in ((C.GLOBAL_BATCH_SIZE, recipe.global_batch_size), (C.GRADIENT_ACCUMULATION_STEPS, 1),
                       (C.TRAIN_SAMPLES, plan.train_samples), (C.EVAL_SAMPLES, plan.eval_samples),
                       (C.OPT_NAME, optimizer_name), (C.OPT_BASE_LR, recipe.peak_lr),
                       (C.OPT_LR_WARMUP_EPOCHS, recipe.warmup_epochs), (C.OPT_WEIGHT_DECAY, recipe.weight_decay),
                       ("opt_momentum", recipe.momentum), (C.OPT_LR_DECAY_SCHEDULE, "cosine"),
                       ("label_smoothing", recipe.label_smoothing), ("model_arch", recipe.arch),
                       ("recipe", recipe.name), ("target_accuracy", recipe.target_accuracy)):
        log.event(key, value)
    log.event("recipe_fields", dataclasses.asdict(recipe))
