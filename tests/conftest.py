"""Shared fixtures (a small synthetic data set in ImageNet layout and its FFCV files, made once per session;
CPU benchmark logs), the helpers that read MLPerf logs, and how the suite shares two cores (`make test`: pytest-xdist,
two workers)."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Every process the tests start gets SIGINT at its default, however pytest was started: a shell's `make test &`
# ignores it, children inherit that, and run_and_time.sh then warns that Ctrl-C cannot stop it (and bash cannot
# trap a signal ignored when it started).
signal.signal(signal.SIGINT, signal.default_int_handler)
# The same for SIGHUP under `nohup make test`: pytest keeps surviving a hangup (a Python handler that does
# nothing), while the processes it starts get SIGHUP at its default on exec, so the SIGHUP tests can trap it.
if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda signum, frame: None)

# One torch thread in each test process and in every trainer it starts (the variable is inherited; TINY_CONFIG
# passes it on): `make test` runs two workers on CI's two cores, and torch's OpenMP threads spin-wait, so two
# threads a process would oversubscribe them (torch up to 3x slower). A test that wants more threads sets them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# FFCV compiles its loading pipeline with numba in every process that builds a loader: ~12 s of the ~19 s a tiny
# training run takes, paid by every trainer the launcher, signal and fault tests start. Those trainers run with
# numba's JIT off (NUMBA_DISABLE_JIT=1: the same FFCV code, reading the same .beton files, interpreted; a tiny run
# then takes ~7 s). FFCV under the JIT is what test_data_loaders runs (in the test process), and what the
# SIGTERM-with-FFCV test runs in a trainer (JIT: the trainer, its compiled loader threads signalled, its exit).
NO_JIT = {"NUMBA_DISABLE_JIT": "1"}
JIT = {"NUMBA_DISABLE_JIT": "0"}


def no_jit() -> dict:
    """The environment of a trainer the test starts itself: this one, FFCV interpreted (NO_JIT)."""
    return {**os.environ, **NO_JIT}


# Under `make test` (pytest -n 2 --dist loadfile): a module's tests share a worker (a module fixture is built once),
# and the modules that take longest start first, so that neither worker is left with a long one at the end (slowest
# first, as `make test`'s --durations shows them; the other modules follow in file order). Session data: built_once.
SLOW_MODULES = ("test_run_and_time.py", "test_faults.py", "test_slurm.py", "test_train.py", "test_bench.py",
                "test_methods.py", "test_data_prepare.py", "test_data_loaders.py")


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):      # a pytest-xdist worker
        rank = {name: i for i, name in enumerate(SLOW_MODULES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def built_once(request, name: str, build) -> Path:
    """The folder `name` that `build(folder)` fills, built once a test run: under pytest-xdist the workers share
    their base folders' parent, and the first worker to ask builds it while the others wait on its lock."""
    root = request.getfixturevalue("tmp_path_factory").getbasetemp()
    if hasattr(request.config, "workerinput"):
        root = root.parent
    folder, built = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # released when the file closes
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)   # a worker's failed build
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


def events(log: Path) -> list[dict]:
    """The MLLOG events of a result log, in order."""
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in Path(log).read_text().splitlines()
            if ":::MLLOG" in line]


def keys(log: Path) -> list[str]:
    return [e["key"] for e in events(log)]


def first(log: Path, key: str) -> dict:
    return next(e for e in events(log) if e["key"] == key)


def run_stop(log: Path) -> dict:
    return first(log, "run_stop")


def sh(*args, env=None, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def source_config(path: Path, cwd: Path = REPO, **preset) -> dict:
    """What `source path` exports in an empty environment (plus `preset`): the launcher's one reader."""
    from resnet.launch import config_environ

    return config_environ(path, preset, cwd=cwd)


def fake_data(tmp_path: Path) -> Path:
    """Enough of an FFCV folder for the settings check (a dry run reads no image)."""
    data = tmp_path / "ffcv"
    data.mkdir()
    for name in ("train.beton", "val.beton"):
        (data / name).touch()
    return data


def cli(*args, check=True, env=None, timeout=600, **kw):
    """Run `mlperf-resnet ARGS` as a user would, in a fresh process (`train`: numba's JIT off unless env says)."""
    return subprocess.run([sys.executable, "-m", "resnet.cli", *map(str, args)], capture_output=True, text=True,
                          check=check, env={**os.environ, **(NO_JIT if args[:1] == ("train",) else {}), **(env or {})},
                          timeout=timeout, cwd=kw.get("cwd", REPO))


@pytest.fixture(scope="session")
def synth_tree(request) -> Path:
    """4 classes x (48 train + 12 val) images of 48 px."""
    from resnet.data.synth import make_synthetic

    return built_once(request, "synth", lambda out: make_synthetic(
        out / "tree", classes=4, train_per_class=48, val_per_class=12, size_px=48, seed=1, progress=False)) / "tree"


@pytest.fixture(scope="session")
def ffcv_data(synth_tree, request) -> Path:
    from resnet.data.prepare import prepare

    return built_once(request, "ffcv", lambda out: prepare(
        synth_tree, out / "data", workers=2, log=open(os.devnull, "w"))) / "data"


TINY_CONFIG = {  # config_CPU.sh's shape, shrunk so that one run takes seconds
    "DGXSYSTEM": "CPU", "DGXNGPU": "1", "DGXNNODES": "1", "RECIPE": "mild", "ARCH": "resnet18", "LOADER": "ffcv",
    "EPOCHS": "2", "BATCHSIZE": "16", "EVAL_EVERY_EPOCHS": "1", "TARGET_ACCURACY": "0.1", "PRECISION": "fp32",
    "NUM_WORKERS": "1", "TRAIN_CROP_PX": "32", "EVAL_CROP_PX": "32", "EVAL_RESIZE_PX": "36", "WARMUP_EPOCHS": "1",
    "SUBMISSION_ORG": "tests", "SUBMISSION_STATUS": "research",
    "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],  # not a setting: one torch thread (see the top of this file)
    **NO_JIT,                                          # not a setting either: FFCV interpreted (see the top)
}   # the recipe's EMA, in epochs, on 12 steps an epoch: an update every step, half-life 1.9 steps
NOT_SETTINGS = ("OMP_NUM_THREADS", *NO_JIT)   # TINY_CONFIG's names that are no setting (and so no flag)


def run_and_time(env: dict, timeout=900) -> subprocess.CompletedProcess:
    """`./run_and_time.sh` as a user runs it after sourcing a config (here: TINY_CONFIG plus `env`)."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(["./run_and_time.sh"], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/root"), "PYTHON": sys.executable,
                               **TINY_CONFIG, **env})


@pytest.fixture(scope="session")
def cpu_benchmark(ffcv_data, request):
    """Five seeds of the real benchmark path (run_and_time.sh -> torchrun -> resnet.train) on the CPU, run once for
    test_run_and_time and test_compliance_package (their workers share it): its console and its results folder."""
    def build(folder):
        (folder / "logdir").mkdir()
        out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(folder / "logdir"), "NEXP": "5", "SEED": "100"})
        (folder / "console.json").write_text(json.dumps([out.returncode, out.stdout, out.stderr]))

    folder = built_once(request, "cpu_benchmark", build)
    returncode, stdout, stderr = json.loads((folder / "console.json").read_text())
    out = subprocess.CompletedProcess(["./run_and_time.sh"], returncode, stdout, stderr)
    return out, folder / "logdir" / "CPU" / "resnet"


@pytest.fixture(scope="session")
def cpu_result_logs(cpu_benchmark) -> Path:
    out, results = cpu_benchmark
    assert out.returncode == 5, out.stderr[-4000:]     # valid at TINY_CONFIG's 0.1, below MLPerf's target: exit 5
    return results
