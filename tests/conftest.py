"""Shared fixtures (a small synthetic data set in ImageNet layout and its FFCV files, made once per session;
CPU benchmark logs), the helpers that read MLPerf logs, and how the suite shares two cores (`make test`: pytest-xdist,
two workers)."""
import json
import os
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

# One torch thread in each test process and in every trainer it starts (the variable is inherited; run_and_time()
# passes it on): `make test` runs two workers on CI's two cores, and torch's OpenMP threads spin-wait, so two
# threads a process would oversubscribe them (torch up to 3x slower). A test that wants more threads sets them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Under `make test` (pytest -n 2 --dist loadgroup): the tests of one module share a worker (a module fixture is
# built once), and so do the tests that read the five-seed benchmark (cpu_benchmark, built once a worker) wherever
# they live. The groups that take longest start first, so that neither worker is left with a long one at the end
# (their order, slowest first, from `pytest --durations=0` under `make test`; the other groups follow in file order).
BENCHMARK_FIXTURES = {"cpu_benchmark", "cpu_result_logs"}
SLOW_GROUPS = ("cpu_benchmark", "tests/test_run_and_time.py", "tests/test_slurm.py", "tests/test_faults.py",
               "tests/test_bench.py", "tests/test_train.py")


def xdist_group(item) -> str:
    """The benchmark's readers (a fixture, or a fixture's name as a parameter: test_compliance_package) are one
    group; the other tests are grouped by module."""
    reads = any(name in item.fixturenames or name in item.nodeid for name in BENCHMARK_FIXTURES)
    return "cpu_benchmark" if reads else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    rank = {name: i for i, name in enumerate(SLOW_GROUPS)}
    items.sort(key=lambda item: rank.get(xdist_group(item), len(rank)))


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
    """Run `mlperf-resnet ARGS` as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "resnet.cli", *map(str, args)], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})}, timeout=timeout, cwd=kw.get("cwd", REPO))


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> Path:
    """4 classes x (48 train + 12 val) images of 48 px."""
    out = tmp_path_factory.mktemp("synth") / "tree"
    from resnet.data.synth import make_synthetic

    make_synthetic(out, classes=4, train_per_class=48, val_per_class=12, size_px=48, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def ffcv_data(synth_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ffcv") / "data"
    from resnet.data.prepare import prepare

    prepare(synth_tree, out, workers=2, log=open(os.devnull, "w"))
    return out


TINY_CONFIG = {  # config_CPU.sh's shape, shrunk so that one run takes seconds
    "DGXSYSTEM": "CPU", "DGXNGPU": "1", "DGXNNODES": "1", "RECIPE": "mild", "ARCH": "resnet18", "LOADER": "ffcv",
    "EPOCHS": "2", "BATCHSIZE": "16", "EVAL_EVERY_EPOCHS": "1", "TARGET_ACCURACY": "0.1", "PRECISION": "fp32",
    "NUM_WORKERS": "1", "TRAIN_CROP_PX": "32", "EVAL_CROP_PX": "32", "EVAL_RESIZE_PX": "36", "WARMUP_EPOCHS": "1",
    "SUBMISSION_ORG": "tests", "SUBMISSION_STATUS": "research",
}   # the recipe's EMA, in epochs, on 12 steps an epoch: an update every step, half-life 1.9 steps


def run_and_time(env: dict, timeout=900) -> subprocess.CompletedProcess:
    """`./run_and_time.sh` as a user runs it after sourcing a config (here: TINY_CONFIG plus `env`)."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(["./run_and_time.sh"], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/root"), "PYTHON": sys.executable,
                               "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], **TINY_CONFIG, **env})


@pytest.fixture(scope="session")
def cpu_benchmark(ffcv_data, tmp_path_factory):
    """Five seeds of the real benchmark path (run_and_time.sh -> torchrun -> resnet.train) on the CPU."""
    logdir = tmp_path_factory.mktemp("logdir")
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(logdir), "NEXP": "5", "SEED": "100"})
    return out, logdir / "CPU" / "resnet"


@pytest.fixture(scope="session")
def cpu_result_logs(cpu_benchmark) -> Path:
    out, results = cpu_benchmark
    assert out.returncode == 0, out.stderr[-4000:]
    return results
