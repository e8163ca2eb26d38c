"""A complete open-division ResNet result log, written with the official `mlperf_logging.mllog` API, with
timings and accuracies you choose (a test fixture: it lives under tests/, outside the packages a submission
ships).

It is the executable form of what the official compliance checker demands of an open ResNet log (rulesets 2.0.0
and 4.0.0): which keys, in what order, with which metadata. The tests use it as their fixture, so a change in
the checker's demands shows up as a failing test here rather than as a rejected submission.

Epochs are numbered as MosaicML's Composer and NVIDIA number them, and as our trainer does: `epoch_start` and
`block_start` carry the number of epochs completed before them (the 0-based index of the epoch starting);
`epoch_stop`, `eval_start`, `eval_stop`, `eval_accuracy` and `block_stop` carry the number completed after.
Evaluations follow Composer's cadence: after every `eval_every_epochs` completed epochs, and after the last.
"""
import logging
from pathlib import Path

from mlperf_logging.mllog import mllog
from mlperf_logging.mllog import constants as C

IMAGENET_TRAIN_SAMPLES = 1_281_167
IMAGENET_EVAL_SAMPLES = 50_000
MINUTE_MS = 60_000


def evaluates_after(epochs: int, every: int) -> list[int]:
    """Completed-epoch counts after which Composer evaluates: every `every` epochs, and after the last."""
    after = list(range(every, epochs + 1, every))
    return after if after and after[-1] == epochs else [*after, epochs]


def write_reference_log(path, *, seed: int, minutes: float, converge: bool = True, org: str = "ExampleOrg",
                        platform: str = "1xCPU", status: str = C.ONPREM, division: str = C.OPEN, epochs: int = 16,
                        eval_every_epochs: int = 4, final_accuracy: float = 0.7612, target: float = 0.759,
                        start_ms: int = 1_700_000_000_000, after_stop: bool = False) -> Path:
    """Write one run's log to `path`: `minutes` from run_start to run_stop; the last evaluation reaches
    `final_accuracy` and the run stops with status success (or, with converge=False, ends below `target` and
    stops with status aborted). after_stop=True adds an epoch logged after run_stop (some loggers do that)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tests.reference_log.{path.resolve()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, mode="w")
    logger.addHandler(handler)
    ml = mllog.MLLogger(logger=logger)
    clock = {"ms": start_ms}

    def at(ms_later: float = 0) -> int:
        clock["ms"] += int(ms_later)
        return clock["ms"]

    try:
        # ---- init: untimed, but at most 240 minutes (open) from the first init_start to init_stop ----------------
        ml.event(C.CACHE_CLEAR, value=True, time_ms=at())
        ml.start(C.INIT_START, time_ms=at())
        for key, value in ((C.SUBMISSION_BENCHMARK, C.RESNET), (C.SUBMISSION_DIVISION, division),
                           (C.SUBMISSION_ORG, org), (C.SUBMISSION_PLATFORM, platform), (C.SUBMISSION_STATUS, status),
                           (C.SEED, seed), (C.GLOBAL_BATCH_SIZE, 1024), (C.GRADIENT_ACCUMULATION_STEPS, 1),
                           (C.TRAIN_SAMPLES, IMAGENET_TRAIN_SAMPLES), (C.EVAL_SAMPLES, IMAGENET_EVAL_SAMPLES),
                           (C.OPT_NAME, "decoupled_sgdw"), (C.OPT_BASE_LR, 2.048),
                           (C.OPT_LR_WARMUP_EPOCHS, 5), (C.OPT_WEIGHT_DECAY, 5e-5)):
            ml.event(key, value, time_ms=at())
        ml.end(C.INIT_STOP, time_ms=at(1000))

        # ---- the timed run: run_start ... run_stop ----------------------------------------------------------------
        run_start = at(1)
        ml.start(C.RUN_START, time_ms=run_start)
        run_ms = minutes * MINUTE_MS
        evals = evaluates_after(epochs, eval_every_epochs)
        last = final_accuracy if converge else min(final_accuracy, target - 0.05)
        for block, completed in enumerate(evals):
            first = evals[block - 1] if block else 0  # epochs completed before this block
            ml.start(C.BLOCK_START, time_ms=at(), metadata={C.FIRST_EPOCH_NUM: first,
                                                          C.EPOCH_COUNT: completed - first})
            for epoch in range(first, completed):
                ml.start(C.EPOCH_START, time_ms=at(), metadata={C.EPOCH_NUM: epoch})
                clock["ms"] = run_start + int(run_ms * (epoch + 1) / epochs) - 2
                ml.end(C.EPOCH_STOP, time_ms=at(), metadata={C.EPOCH_NUM: epoch + 1})
            accuracy = last * (block + 1) / len(evals)  # a fraction in [0, 1), never a percentage
            ml.start(C.EVAL_START, time_ms=at(), metadata={C.EPOCH_NUM: completed})
            ml.end(C.EVAL_STOP, time_ms=at(1), metadata={C.EPOCH_NUM: completed})
            ml.event(C.EVAL_ACCURACY, accuracy, time_ms=at(), metadata={C.EPOCH_NUM: completed})
            ml.end(C.BLOCK_STOP, time_ms=at(), metadata={C.FIRST_EPOCH_NUM: completed})
        ml.end(C.RUN_STOP, time_ms=run_start + int(run_ms),
               metadata={C.STATUS: C.SUCCESS if converge else C.ABORTED})
        if after_stop:
            ml.start(C.EPOCH_START, time_ms=run_start + int(run_ms) + 5, metadata={C.EPOCH_NUM: epochs})
            ml.event(C.EVAL_ACCURACY, min(0.99, last + 0.01), time_ms=run_start + int(run_ms) + 9,
                     metadata={C.EPOCH_NUM: epochs + 1})
    finally:
        handler.close()
        logger.removeHandler(handler)
    return path


def write_reference_logs(folder, minutes=(10.0, 11.0, 9.5, 12.0, 10.5), converge=None, **kwargs) -> Path:
    """result_0.txt ... result_{n-1}.txt in `folder`, one per entry of `minutes`, seeds 1000, 1001, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    converge = converge or [True] * len(minutes)
    for i, (run_minutes, ok) in enumerate(zip(minutes, converge)):
        write_reference_log(folder / f"result_{i}.txt", seed=1000 + i, minutes=run_minutes, converge=ok,
                            start_ms=1_700_000_000_000 + i * 86_400_000, **kwargs)
    return folder


# The published MLPerf v2.0 logs the tests compare against (source and licence: tests/data/peer_logs/README.md).
PEER_LOGS = Path(__file__).resolve().parent / "data" / "peer_logs" / "v2.0"


def edit_log(src, dst, replace=None, drop_key=None, keep_lines=None) -> Path:
    """A copy of a log with one key's lines dropped, one string replaced (it must occur), or only its first
    `keep_lines` lines (a stub, as a run that died after claiming its log leaves)."""
    lines = Path(src).read_text().splitlines(keepends=True)
    if drop_key:
        lines = [line for line in lines if f'"key": "{drop_key}"' not in line]
    if keep_lines is not None:
        lines = lines[:keep_lines]
    text = "".join(lines)
    if replace:
        assert replace[0] in text, replace[0]
        text = text.replace(*replace)
    Path(dst).write_text(text)
    return Path(dst)


def edit_events(src, dst, change) -> Path:
    """A copy of a log whose MLLOG events (dicts, in order) went through `change(events) -> events`: to move,
    repeat or re-time lines as an edited log would."""
    import json

    events = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in Path(src).read_text().splitlines()
              if ":::MLLOG" in line]
    Path(dst).write_text("".join(f":::MLLOG {json.dumps(e)}\n" for e in change(events)))
    return Path(dst)
