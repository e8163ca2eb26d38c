"""The first GPU session (README section 7): what one GPU and its image, no data set, tell us in ~7 min, in OUT:

    python -m bench.first_session OUT            # session.json, session.png, session.log, result_0.txt
    SMOKE=1 python -m bench.first_session OUT    # every part at toy sizes on the CPU: proves the script

Each part (PARTS) runs in its own process within its budget (BUDGETS); one that overruns is cut (its rows kept).
"""
import argparse
import importlib.util
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
from types import SimpleNamespace

import torch

from bench import loaders, projection, steps
from bench.common import REPO, device, figure, parser, synthetic_dataset, time_steps, write_json
from compliance.check import check_log
from resnet.data.loaders import declared

SMOKE = os.environ.get("SMOKE") == "1"
#: part: seconds it may take on the GPU (SMOKE: on a loaded 2-core CPU)
BUDGETS = {"data": (15, 120), "cuda_tests": (30, 0), "eager": (130, 150), "compiled": (90, 180), "ema_eval": (15, 90),
           "loader": (35, 120), "gpu_decode": (15, 90), "train": (60, 240)}
SIZES = dict(  # GPU, SMOKE
    batch=(256, 2), arch=("resnet50", "resnet18"), warmup=(2, 1), steps=(5, 2), classes=(8, 4), train=(256, 8),
    val=(32, 4), precisions=(("fp16", "bf16"), ("fp32",)), workers=(os.cpu_count() or 1, 1),
    batch_size=(256, 8), backend=("inductor", "eager"), crop=(176, 32), eval_crop=(224, 32), eval_resize=(232, 36))
S = SimpleNamespace(**{name: sizes[SMOKE] for name, sizes in SIZES.items()}, device=device(), work=None, spec=[],
                    sides=[16, 32] if SMOKE else None)   # each part's settings (batch: steps', batch_size: loaders')
S.fields = dict(train_crop_px=S.crop, eval_crop_px=S.eval_crop, eval_resize_px=S.eval_resize)   # SMOKE: toy ones


def data(s, loader: str = "torchvision") -> Path:   # image folders (FFCV: .beton), made once under s.work
    ffcv = not (SMOKE or declared("ffcv").missing())
    return synthetic_dataset(s.work, ffcv, classes=s.classes, train_per_class=s.train, val_per_class=s.val,
                             size_px=500)[loader == "ffcv"]


def part_data(s, emit):
    emit(dict(folders=str(data(s)), images=len(list(data(s).glob("*/*/*.JPEG")))))


def part_cuda_tests(s, emit):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-4000:], flush=True)
    emit(dict(exit_code=proc.returncode, summary=(proc.stdout.strip().splitlines() or [""])[-1]))


def part_loader(s, emit):
    for loader in ("torchvision", "ffcv", "dali"):
        if SMOKE and loader != "torchvision":
            emit(dict(loader=loader, status="not run under SMOKE (tests/test_data_loaders.py runs it)"))
            continue
        spec = loaders.spec_for(s, "cpu" if loader == "torchvision" else str(s.device))   # as bench.loaders makes it
        emit(loaders.measure(loader, data(s, loader), spec, 2, 2 * s.classes * s.train // s.batch_size))


def part_gpu_decode(s, emit):   # torchvision.io.decode_jpeg of the training JPEGs, 32 a call (CUDA: nvJPEG)
    from torchvision.io import decode_jpeg, read_file
    dev, shapes = s.device, []
    files = [read_file(str(f)) for f in sorted(data(s).glob("train/*/*.JPEG"))]
    batches = [files[i:i + 32] for i in range(0, len(files), 32)]
    wall = time_steps(lambda: shapes.append([decode_jpeg(b, device=dev)[0].shape for b in batches]), dev, 1, 1)
    emit(dict(device=str(dev), images=len(files), shape=list(shapes[-1][-1]), batch_size=32,
              img_s=round(len(files) / wall["step_s"], 1)))


def part_train(s, emit):
    log, dev = Path(os.environ["SESSION_OUT"]) / "result_0.txt", s.device
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "resnet.train",
           "--recipe", "mild", "--arch", s.arch, "--epochs", "2", "--warmup-epochs", "1", "--eval-every-epochs", "2",
           "--target-accuracy", "0.05", "--batch-size", str(s.batch_size), "--loader", "torchvision",
           "--precision", "fp16" if dev.type == "cuda" else "fp32", "--workers", str(s.workers), "--data",
           str(data(s)), "--platform", "first_session", "--seed", "1", "--log-file", str(log), "--device", dev.type,
           *(word for field, px in s.fields.items() for word in (f"--{field.replace('_', '-')}", str(px)))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=s.work)
    print(proc.stderr[-2000:], flush=True)
    if proc.returncode:
        raise RuntimeError(f"resnet.train exited {proc.returncode}")
    if importlib.util.find_spec("mlperf_logging") is None:
        raise RuntimeError("mlperf-logging is not installed: carry its wheel (README, the first GPU session)")
    passed, problems = check_log(log)
    emit(dict(exit_code=proc.returncode, checker="PASS" if passed else "FAIL", problems=problems[:5]))
    if not passed:
        raise RuntimeError(f"the compliance checker failed {log.name}: {'; '.join(problems[:3])}")


PARTS = {"data": part_data, "cuda_tests": part_cuda_tests, "eager": steps.eager, "compiled": steps.compiled,
         "ema_eval": steps.ema_eval, "loader": part_loader, "gpu_decode": part_gpu_decode, "train": part_train}


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
    with figure(path, f"one training step on {session['device']} (bench.first_session)", "training side, px",
                "images/s (one device)") as ax:
        for (loop, precision, compiled), points in sorted(series.items()):
            ax.plot(*zip(*sorted(points)), marker="o" if compiled else ".", ls="none" if compiled else "-",
                    label=f"{loop} {precision}{' compiled' if compiled else ''}")


def main(argv=None) -> int:
    p = parser(__doc__, "the folder to write (new or empty); with --part: the work folder")
    p.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:   # one part(S, emit) in its own process: each result emitted one `RESULT {json}` line as it comes
        torch.backends.cudnn.benchmark = True   # as the trainer sets it on CUDA
        S.work = args.out
        return PARTS[args.part](S, lambda row: print("RESULT " + json.dumps(row, default=str), flush=True))
    if not torch.cuda.is_available() and not SMOKE:
        raise SystemExit("first_session: error: no CUDA device visible; SMOKE=1 proves the script on the CPU")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"first_session: error: {args.out} is not empty; choose a new or empty folder")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="first-session-"))     # the data: never among OUT's files
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    session = dict(device=name, cores=len(os.sched_getaffinity(0)), smoke=SMOKE, work=str(work), parts={})
    budgets, log = {part: b[SMOKE] for part, b in BUDGETS.items()}, open(args.out / "session.log", "w")

    def say(text):
        print(text, flush=True)
        print(text, file=log)
    say(f"first_session on {name}{' (SMOKE: toy sizes, the numbers mean nothing)' if SMOKE else ''}; budgets: "
        + ", ".join(f"{k} {v} s" for k, v in budgets.items()) + f"; {sum(budgets.values())} s in all")
    for part, budget in budgets.items():
        skip = part == "cuda_tests" and not torch.cuda.is_available()
        result = dict(status="skipped", seconds=0, budget_s=budget, detail="no CUDA device", rows=[]) if skip else \
            run_part(part, budget, work, args.out, say)
        session["parts"][part] = result
        say(f"{result['status'].upper()}: {part} ({result['seconds']} s): {result['detail']}")
    try:   # bench.projection's table for 8 of this device, from the rates measured above
        projected = projection.report(projection.parse_args(["--session", "-", "--gpus", "8"]), session)
        session["projection"] = {k: v for k, v in projected.items() if k != "text"}
        say(projected["text"])
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
    raise SystemExit(main())
