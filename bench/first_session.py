"""The first GPU session: everything a machine with one NVIDIA GPU, its image's packages and no data set can tell
us, in about 7 minutes from a bare start, written as four files to OUT (which must not exist yet):

    python -m bench.first_session OUT            # session.json, session.png, session.log, result_0.txt
    SMOKE=1 python -m bench.first_session OUT    # the same parts on the CPU at toy sizes: proves the script

Each part runs in its own process with its own time budget (all printed before the first starts); a part that
overruns is cut, says so and keeps the rows it printed, and the next part still runs. The parts:
  data        ImageNet-geometry JPEGs (long side 500 px, `mlperf-resnet synth`) for the loaders and the train run
  cuda_tests  `pytest -m cuda tests/test_cuda.py`: AMP fp16/bf16, channels-last, the sync-free step, GPU-0 contexts
  eager       ours (`resnet.train.train_step`) and the plain step at every side of the schedule, fp16 and bf16
  compiled    the trainer's warm_up (its seconds and graphs), then both compiled at its two sides, fp16, and the
              graphs compiled after the warm-up (the trainer needs zero)
  syncs       host synchronisations per step (torch.cuda.set_sync_debug_mode), over one EMA period
  ema_eval    one EMA update's seconds; the evaluation forward at 224 in fp32, images/s
  loader      torchvision's loader with a worker per core, FFCV and DALI where installed ("not installed here")
  gpu_decode  torchvision.io.decode_jpeg on the GPU (nvJPEG) at ImageNet geometry
  train       a short real `resnet.train` run on the GPU (torchvision loader); the official checker on its log
  projection  bench.projection from the rates above: 8 of this GPU (printed, and in session.json)
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, installed, write_json

SMOKE = os.environ.get("SMOKE") == "1"
#: part: seconds it may take on the GPU (SMOKE: on a loaded 2-core CPU)
BUDGETS = {"data": (20, 60), "cuda_tests": (40, 5), "eager": (75, 60), "compiled": (110, 90), "syncs": (15, 5),
           "ema_eval": (15, 30), "loader": (40, 90), "gpu_decode": (15, 30), "train": (70, 120)}
SIZES = dict(  # GPU, SMOKE
    batch=(256, 2), arch=("resnet50", "resnet18"), warmup=(2, 1), steps=(6, 2), classes=(8, 4), train=(256, 8),
    val=(32, 4), precisions=(("fp16", "bf16"), ("fp32",)), workers=(os.cpu_count() or 1, 1),
    loader_batch=(256, 8), backend=("inductor", "eager"), crop=(176, 32), eval_crop=(224, 32), eval_resize=(232, 36))


def size(name):
    return SIZES[name][SMOKE]


def crops() -> dict:
    """The recipe's crops (SMOKE: toy ones)."""
    return dict(train_crop_px=size("crop"), eval_crop_px=size("eval_crop"), eval_resize_px=size("eval_resize"))


def device():
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True   # as the trainer sets it on CUDA
        return torch.device("cuda")
    return torch.device("cpu")


def folders(work: Path) -> Path:
    from bench.common import synthetic_dataset

    return synthetic_dataset(work, size("classes"), size("train"), size("val"), 500,
                             ffcv=installed("ffcv") and not SMOKE)[0]


# ----------------------------------------------------------------------------- the parts (each in its own process)
def part_data(work, emit):
    root = folders(work)
    emit(dict(folders=str(root), images=len(list(root.glob("*/*/*.JPEG")))))


def part_cuda_tests(work, emit):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-4000:], flush=True)
    emit(dict(exit_code=proc.returncode, summary=(proc.stdout.strip().splitlines() or [""])[-1]))


def part_eager(work, emit):
    from bench import steps

    for precision in size("precisions"):
        steps.eager_rates(device(), precision, size("batch"), size("warmup"), size("steps"), size("arch"), emit,
                          [size("crop") // 2, size("crop")] if SMOKE else None, **crops())


def part_compiled(work, emit):
    from bench import steps

    steps.compiled_rates(device(), size("precisions")[0], size("batch"), size("warmup"), size("steps"),
                         size("arch"), emit, size("backend"), **crops())


def part_syncs(work, emit):
    from bench import steps

    emit(steps.host_syncs(device(), "fp16", size("batch"), size("arch")))


def part_ema_eval(work, emit):
    from bench import steps

    dev = device()
    t, plan = steps.ours(dev, size("precisions")[0], size("batch"), size("arch"), **crops())
    emit(steps.ema_and_eval(t, plan, dev, size("batch"), size("warmup"), size("steps")))


def part_loader(work, emit):
    import argparse

    from bench import loaders

    root = folders(work)
    for loader in ("torchvision", "ffcv", "dali"):
        data = root.parent / root.name.replace("synth-", "ffcv-") if loader == "ffcv" else root
        if SMOKE and loader != "torchvision":
            emit(dict(loader=loader, status="not run under SMOKE (tests/test_data_loaders.py runs it)"))
            continue
        args = argparse.Namespace(data=str(data), batch_size=size("loader_batch"), crop=size("crop"),
                                  eval_crop=size("eval_crop"), eval_resize=size("eval_resize"), workers=size("workers"), spec=[], precision=None, warmup=2,
                                  batches=2 * size("classes") * size("train") // size("loader_batch"))
        emit(loaders.measure(args, loader, str(device()) if loader != "torchvision" else "cpu"))


def part_gpu_decode(work, emit):
    import argparse

    from bench import loaders

    emit(loaders.gpu_decode(argparse.Namespace(data=str(folders(work)), images=size("classes") * size("train"), batch_size=32,
                                               device=str(device()))))


def part_train(work, emit):
    from compliance.check import check_log

    log, dev = Path(os.environ["SESSION_OUT"]) / "result_0.txt", device()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "resnet.train",
           "--recipe", "mild", "--arch", size("arch"), "--epochs", "2", "--warmup-epochs", "1",
           "--eval-every-epochs", "2", "--target-accuracy", "0.05", "--batch-size", str(size("loader_batch")),
           "--precision", "fp16" if dev.type == "cuda" else "fp32", "--loader", "torchvision",
           "--workers", str(size("workers")), "--data", str(folders(work)), "--platform", "first_session",
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


CUDA_ONLY = ("cuda_tests", "syncs")
PARTS = {name[5:]: fn for name, fn in globals().items() if name.startswith("part_")}


def child(name: str, work: Path) -> int:
    """Run one part, printing each result as one `RESULT {json}` line as it comes."""
    def emit(row):
        print("RESULT " + json.dumps(row, default=str), flush=True)
    PARTS[name](work, emit)
    return 0


# ------------------------------------------------------------------------------------- the driver (one process)
def run_part(name: str, budget: float, work: Path, out: Path) -> dict:
    """The part in a child process with `budget` seconds; its RESULT lines are its rows (kept when it is cut)."""
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
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=budget)
        status = "done" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "cut"
    reader.join(timeout=10)
    seconds = round(time.perf_counter() - started, 1)
    detail = (f"cut after its {budget:.0f} s budget, {len(rows)} result(s) kept" if status == "cut" else
              "" if status == "done" else " | ".join(lines[-3:]))
    return dict(status=status, seconds=seconds, budget_s=budget, detail=detail, rows=rows, output=lines[-40:])


def summary(name: str, part: dict) -> str:
    rows = part["rows"]
    if name in ("eager", "compiled"):
        text = ", ".join(f"{r['loop']} {r['precision']}{' compiled' if r['compiled'] else ''} {r['px']} px "
                         f"{r['img_s']:.0f}" for r in rows if "loop" in r)
        extra = [f"{r['part']}: {r.get('seconds', '')} {r['graphs']} graphs" for r in rows if "part" in r]
        return "; ".join(filter(None, [text, *extra]))
    return "; ".join(json.dumps({k: v for k, v in r.items() if k not in ("rows", "output")}) for r in rows)


def plot(session: dict, path: Path) -> None:
    """images/s against the side: ours and plain, fp16 and bf16, eager (lines) and compiled (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rows = [r for name in ("eager", "compiled") for r in session["parts"][name]["rows"] if "loop" in r]
    for loop in ("ours", "plain"):
        for precision in ("fp16", "bf16"):
            for compiled in (False, True):
                mine = sorted((r["px"], r["img_s"]) for r in rows if (r["loop"], r["precision"], r["compiled"])
                              == (loop, precision, compiled))
                if mine:
                    ax.plot(*zip(*mine), marker="o" if compiled else ".", ls="none" if compiled else "-",
                            label=f"{loop} {precision}{' compiled' if compiled else ''}")
    ax.set(xlabel="training side, px", ylabel="images/s (one device)", title=f"one training step on "
           f"{session['device']} (bench.first_session)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def project(session: dict) -> str:
    """bench.projection's table for 8 of this device, from the rates measured above."""
    import argparse

    from bench import projection

    tmp = Path(session["work"]) / "session-so-far.json"
    tmp.write_text(json.dumps(session, default=str))
    args = argparse.Namespace(session=tmp, config=None, gpus=8, cores_per_gpu=None, bus_gb_s=400.0, overlap=0.8,
                              through_epoch=None, smoke=SMOKE, out=None, **{k: v for k, v in
                                                                           projection.IMAGENET.items()})
    result = projection.report(args)
    session["projection"] = {k: v for k, v in result.items() if k != "text"}
    return result["text"]


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the folder to write (must not exist); with --part: the work folder")
    p.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        return child(args.part, args.out)
    import torch

    if not torch.cuda.is_available() and not SMOKE:
        print("first_session: error: no CUDA device visible; this script measures a GPU (SMOKE=1 proves it on "
              "the CPU)", file=sys.stderr)
        return 1
    if args.out.exists():
        print(f"first_session: error: {args.out} already exists; choose a new folder (results are never "
              "overwritten)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True)
    work = Path(os.environ.get("SESSION_WORK") or args.out.parent / f".{args.out.name}.work")
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
            result = run_part(part, budget, work, args.out)
        session["parts"][part] = result
        say(f"{result['status'].upper()}: {part} ({result['seconds']} s): {result['detail'] or summary(part, result)}")
        if part == "loader":
            for r in result["rows"]:
                say(f"  loader {r['loader']}: " + (f"{r['img_s']:.0f} img/s, first batch {r['first_batch_s']} s"
                                                    if r["status"] == "measured" else r["status"]))
    try:
        say(project(session))
    except Exception as e:   # a projection without its rates is said so; the files are still written
        say(f"projection: not possible: {type(e).__name__}: {e}")
    plot(session, args.out / "session.png")
    write_json(args.out / "session.json", session)
    failed = [k for k, v in session["parts"].items() if v["status"] in ("failed", "cut")]
    say(f"first_session: {len(budgets) - len(failed)} of {len(budgets)} parts done or skipped"
        + (f"; not done: {', '.join(failed)}" if failed else "") + f"; files in {args.out}")
    log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
