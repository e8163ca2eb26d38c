"""The first GPU session (README, "7. The first GPU session"): what one NVIDIA GPU with its image's packages and
no data set can tell us, in about 7 minutes, as four files in OUT (new or empty):

    python -m bench.first_session OUT            # session.json, session.png, session.log, result_0.txt
    SMOKE=1 python -m bench.first_session OUT    # every part at toy sizes on the CPU: proves the script

Each part (PARTS) runs in its own process within its budget (BUDGETS, printed first); one that overruns is cut,
says so and keeps the rows it printed, and the next part still runs.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench import loaders, projection, steps
from bench.common import REPO, figure, installed, synthetic_dataset, write_json
from compliance.check import check_log

SMOKE = os.environ.get("SMOKE") == "1"
#: part: seconds it may take on the GPU (SMOKE: on a loaded 2-core CPU)
BUDGETS = {"data": (15, 120), "cuda_tests": (30, 0), "eager": (130, 150), "compiled": (90, 180), "syncs": (15, 0),
           "ema_eval": (15, 90), "loader": (35, 120), "gpu_decode": (15, 90), "train": (60, 240)}
SIZES = dict(  # GPU, SMOKE
    batch=(256, 2), arch=("resnet50", "resnet18"), warmup=(2, 1), steps=(5, 2), classes=(8, 4), train=(256, 8),
    val=(32, 4), precisions=(("fp16", "bf16"), ("fp32",)), workers=(os.cpu_count() or 1, 1),
    loader_batch=(256, 8), backend=("inductor", "eager"), crop=(176, 32), eval_crop=(224, 32), eval_resize=(232, 36))


def size(name):
    return SIZES[name][SMOKE]


def crops() -> dict:   # the recipe's (SMOKE: toy ones)
    return dict(train_crop_px=size("crop"), eval_crop_px=size("eval_crop"), eval_resize_px=size("eval_resize"))


def device():
    torch.backends.cudnn.benchmark = True   # as the trainer sets it on CUDA
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def data(work: Path, loader: str = "torchvision") -> Path:   # image folders (FFCV: .beton), made once under work
    made = synthetic_dataset(work, installed("ffcv") and not SMOKE, classes=size("classes"),
                             train_per_class=size("train"), val_per_class=size("val"), size_px=500)
    return made[loader == "ffcv"]


def part_data(work, emit):
    emit(dict(folders=str(data(work)), images=len(list(data(work).glob("*/*/*.JPEG")))))


def part_cuda_tests(work, emit):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-4000:], flush=True)
    emit(dict(exit_code=proc.returncode, summary=(proc.stdout.strip().splitlines() or [""])[-1]))


def part_eager(work, emit):
    for precision in size("precisions"):
        steps.eager_rates(device(), precision, size("batch"), size("warmup"), size("steps"), size("arch"), emit,
                          [size("crop") // 2, size("crop")] if SMOKE else None, **crops())


def part_compiled(work, emit):
    steps.compiled_rates(device(), size("precisions")[0], size("batch"), size("warmup"), size("steps"),
                         size("arch"), emit, size("backend"), **crops())


def part_syncs(work, emit):
    emit(steps.host_syncs(device(), "fp16", size("batch"), size("arch")))


def part_ema_eval(work, emit):
    t, plan = steps.ours(device(), size("precisions")[0], size("batch"), size("arch"), **crops())
    emit(steps.ema_and_eval(t, plan, device(), size("batch"), size("warmup"), size("steps")))


def part_loader(work, emit):
    for loader in ("torchvision", "ffcv", "dali"):
        if SMOKE and loader != "torchvision":
            emit(dict(loader=loader, status="not run under SMOKE (tests/test_data_loaders.py runs it)"))
            continue
        args = argparse.Namespace(data=str(data(work, loader)), batch_size=size("loader_batch"), crop=size("crop"),
                                  eval_crop=size("eval_crop"), eval_resize=size("eval_resize"), spec=[], warmup=2,
                                  workers=size("workers"), precision=None,
                                  batches=2 * size("classes") * size("train") // size("loader_batch"))
        emit(loaders.measure(args, loader, str(device()) if loader != "torchvision" else "cpu"))


def part_gpu_decode(work, emit):
    emit(loaders.gpu_decode(argparse.Namespace(data=str(data(work)), images=size("classes") * size("train"),
                                               batch_size=32, device=str(device()))))


def part_train(work, emit):
    log, dev = Path(os.environ["SESSION_OUT"]) / "result_0.txt", device()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "resnet.train",
           "--recipe", "mild", "--arch", size("arch"), "--epochs", "2", "--warmup-epochs", "1",
           "--eval-every-epochs", "2", "--target-accuracy", "0.05", "--batch-size", str(size("loader_batch")),
           "--precision", "fp16" if dev.type == "cuda" else "fp32", "--loader", "torchvision",
           "--workers", str(size("workers")), "--data", str(data(work)), "--platform", "first_session",
           "--seed", "1", "--log-file", str(log), "--device", dev.type, "--train-crop-px", str(size("crop")),
           "--eval-crop-px", str(size("eval_crop")), "--eval-resize-px", str(size("eval_resize"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    print(proc.stderr[-2000:], flush=True)
    if proc.returncode:
        raise RuntimeError(f"resnet.train exited {proc.returncode}")
    if not installed("mlperf_logging"):
        raise RuntimeError("mlperf-logging is not installed: carry its wheel (README, the first GPU session)")
    passed, problems = check_log(log)
    emit(dict(exit_code=proc.returncode, checker="PASS" if passed else "FAIL", problems=problems[:5]))
    if not passed:
        raise RuntimeError(f"the compliance checker failed {log.name}: {'; '.join(problems[:3])}")


CUDA_ONLY, PARTS = ("cuda_tests", "syncs"), {name[5:]: fn for name, fn in globals().items() if name.startswith("part_")}


def run_part(name: str, budget: float, work: Path, out: Path, say=print) -> dict:
    """The part in a child process within `budget` s; each RESULT line a row, said as it comes, kept if cut."""
    started, rows, lines = time.perf_counter(), [], []
    proc = subprocess.Popen([sys.executable, "-m", "bench.first_session", "--part", name, str(work)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "SESSION_OUT": str(out), "PYTHONUNBUFFERED": "1",
                                 **({"OMP_NUM_THREADS": "1"} if SMOKE else {})})   # spinning threads on a busy CPU

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("RESULT "):
                rows.append(json.loads(line[7:]))
                say(f"  {name}: {line[7:].strip()}")
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        status = "done" if proc.wait(timeout=budget) == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "cut"
    reader.join(timeout=10)
    detail = (f"cut after its {budget:.0f} s budget, {len(rows)} result(s) kept" if status == "cut" else
              f"{len(rows)} result(s)" if status == "done" else " | ".join(lines[-3:]))
    return dict(status=status, seconds=round(time.perf_counter() - started, 1), budget_s=budget, detail=detail,
                rows=rows, output=lines[-40:])


def plot(session: dict, path: Path) -> None:
    """images/s against the side: ours and plain, per precision, eager (lines) and compiled (points)."""
    series = {}
    for r in (r for name in ("eager", "compiled") for r in session["parts"][name]["rows"] if "loop" in r):
        series.setdefault((r["loop"], r["precision"], r["compiled"]), []).append((r["px"], r["img_s"]))

    def draw(ax):
        for (loop, precision, compiled), points in sorted(series.items()):
            ax.plot(*zip(*sorted(points)), marker="o" if compiled else ".", ls="none" if compiled else "-",
                    label=f"{loop} {precision}{' compiled' if compiled else ''}")
    figure(path, f"one training step on {session['device']} (bench.first_session)", "training side, px",
           "images/s (one device)", draw)


def project(session: dict) -> str:
    """bench.projection's table for 8 of this device, from the rates measured above."""
    result = projection.report(projection.parse_args(["--session", "-", "--gpus", "8"]), session)
    session["projection"] = {k: v for k, v in result.items() if k != "text"}
    return result["text"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the folder to write (new or empty); with --part: the work folder")
    p.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:   # one part, in its own process: each result one `RESULT {json}` line as it comes
        return PARTS[args.part](args.out, lambda row: print("RESULT " + json.dumps(row, default=str), flush=True))
    if not torch.cuda.is_available() and not SMOKE:
        print("first_session: error: no CUDA device visible; this script measures a GPU (SMOKE=1 proves it on "
              "the CPU)", file=sys.stderr)
        return 1
    if args.out.exists() and any(args.out.iterdir()):
        print(f"first_session: error: {args.out} is not empty; choose a new or empty folder (results are never "
              "overwritten)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="first-session-"))     # the data: never among OUT's files
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    session = dict(device=name, cores=len(os.sched_getaffinity(0)), smoke=SMOKE, work=str(work), parts={})
    budgets = {part: b[SMOKE] for part, b in BUDGETS.items()}
    log = open(args.out / "session.log", "w")

    def say(text):
        print(text, flush=True)
        log.write(text + "\n")
    say(f"first_session on {name}{' (SMOKE: toy sizes, the numbers mean nothing)' if SMOKE else ''}; budgets: "
        + ", ".join(f"{k} {v} s" for k, v in budgets.items()) + f"; {sum(budgets.values())} s in all")
    for part, budget in budgets.items():
        if part in CUDA_ONLY and not torch.cuda.is_available():
            result = dict(status="skipped", seconds=0, budget_s=budget, detail="no CUDA device", rows=[])
        else:
            result = run_part(part, budget, work, args.out, say)
        session["parts"][part] = result
        say(f"{result['status'].upper()}: {part} ({result['seconds']} s): {result['detail']}")
    try:
        say(project(session))
    except (Exception, SystemExit) as e:   # a projection without its rates says so; the files are still written
        say(f"projection: not possible: {type(e).__name__}: {e}")
    plot(session, args.out / "session.png")
    write_json(args.out / "session.json", session)
    failed = [k for k, v in session["parts"].items() if v["status"] in ("failed", "cut")]
    say(f"first_session: {len(budgets) - len(failed)} of {len(budgets)} parts done or skipped"
        + (f"; not done: {', '.join(failed)}" if failed else "") + f"; files in {args.out}")
    log.close()
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
