"""Faults around a training run, as a user meets them: a rank that fails, a resume of the wrong checkpoint, a disk
that fills up under the log or the checkpoint, a stop without a checkpoint folder, a GPU config without a GPU.
Real processes, real files, real gloo; each case ends in one console line and a log that says `aborted`."""
import resource
import shutil
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
import torch

from compliance.check import check_log
from tests.conftest import REPO, cli, events, no_jit, run_stop
from tests.test_train import TINY, torchrun


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_an_exception_on_one_rank_ends_the_job_within_seconds(synth_tree, tmp_path):
    """A data error on one of two ranks (a corrupt JPEG in its shard): that rank exits at once, torchrun ends
    its peer, nobody waits for the collective timeout."""
    tree = tmp_path / "tree"
    shutil.copytree(synth_tree, tree)
    victim = sorted((tree / "train").rglob("*.JPEG"))[5]
    victim.write_bytes(b"not a jpeg at all")
    log = tmp_path / "result_0.txt"
    started = time.time()
    proc = torchrun(*TINY, "--loader", "torchvision", "--workers", "0", "--data", tree, "--log-file", log,
                    "--epochs", "3", "--eval-every-epochs", "3", "--target-accuracy", "1.0", "--seed", "2",
                    "--device", "cpu", "--dist-timeout-s", "300")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert time.time() - started < 120, "the job waited for the collective timeout"
    assert any(f"{victim}: cannot read image" in line for line in error_lines(err)), err[-3000:]
    if log.exists() and log.stat().st_size:          # rank 0 logged aborted if it was the failing rank
        assert run_stop(log)["metadata"]["status"] == "aborted"


def resumable(ffcv_data, tmp_path, *extra, stop=signal.SIGTERM):
    """A run stopped by a signal (SIGTERM) once it wrote its first checkpoint, leaving a checkpoint to resume."""
    ckpt = tmp_path / "ck"
    args = [*TINY, "--data", ffcv_data, "--epochs", "3", "--eval-every-epochs", "3", "--target-accuracy", "1.0",
            "--seed", "5", "--checkpoint-dir", ckpt, *extra]
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, args), "--log-file",
                             tmp_path / "first.txt"], cwd=REPO, env=no_jit(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt / "last.pt").exists():
        time.sleep(0.05)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert f"{stop.name}: checkpoint written" in err
    return args, ckpt


@pytest.fixture(scope="module")
def interrupted(ffcv_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupted")
    return resumable(ffcv_data, tmp)


RESUME_CHANGES = [
    (["--batch-size", "8"], "--batch-size (BATCHSIZE): the global batch is 8 here but 16 in the checkpoint"),
    (["--lr", "0.5"], "lr_per_sample"),
    (["--epochs", "4"], "epochs is 4 here but 3 in the checkpoint"),
    (["--arch", "resnet34"], "arch is 'resnet34' here but 'resnet18'"),
    (["--seed", "6"], "--seed: the checkpoint's run used seed 5, not 6"),
]


@pytest.mark.parametrize("change, message", RESUME_CHANGES, ids=[c[0][0] for c in RESUME_CHANGES])
def test_resume_refuses_another_run_naming_the_difference(interrupted, tmp_path, change, message):
    args, ckpt = interrupted
    before = (ckpt / "last.pt").read_bytes()
    log = tmp_path / "resumed.txt"
    out = cli("train", *args, *change, "--resume", "--log-file", log, check=False)
    assert out.returncode == 1, out.stderr
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not log.exists(), "a refused resume must not leave a result log"
    assert (ckpt / "last.pt").read_bytes() == before


def test_resume_refuses_a_finished_run(ffcv_data, tmp_path):
    ckpt = tmp_path / "ck"
    args = [*TINY, "--data", ffcv_data, "--epochs", "1", "--eval-every-epochs", "1", "--target-accuracy", "0.01",
            "--seed", "5", "--checkpoint-dir", ckpt]
    cli("train", *args, "--log-file", tmp_path / "a.txt")
    out = cli("train", *args, "--resume", "--log-file", tmp_path / "b.txt", check=False)
    assert out.returncode == 1
    assert "already ended" in out.stderr and not (tmp_path / "b.txt").exists()


def limited_file_size(limit_bytes: int):
    """A disk that fills up: writes past `limit_bytes` fail with EFBIG (SIGXFSZ ignored, so no core dump)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_a_log_that_cannot_be_written_stops_the_run_in_one_line(ffcv_data, tmp_path):
    log = tmp_path / "result_0.txt"
    proc = subprocess.run([sys.executable, "-m", "resnet.cli", "train", *map(str, TINY), "--data", str(ffcv_data),
                           "--log-file", str(log), "--epochs", "30", "--eval-every-epochs", "1",
                           "--target-accuracy", "1.0", "--seed", "1"], cwd=REPO, env=no_jit(), capture_output=True,
                          text=True, timeout=600, preexec_fn=limited_file_size(6000))
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "cannot write the MLPerf log" in lines[0], proc.stderr[-2000:]
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("epoch ") < 29, "training went on without its log"
    text = log.read_text()
    assert text.endswith("\n") and events(log), "the log was cut mid-line"      # every line whole and parsed
    if "run logged as aborted" in lines[0]:      # what the console says is what the log holds
        assert run_stop(log)["metadata"]["status"] == "aborted"
    else:
        assert "the run could not be logged as aborted" in lines[0] and "run_stop" not in text, lines[0]


def test_a_failed_checkpoint_write_warns_and_the_run_goes_on(ffcv_data, tmp_path):
    """The log fits under the limit, a ResNet-18 checkpoint (~45 MB) does not: each save warns, the run ends in
    success all the same, and no half-written checkpoint is left."""
    log, ckpt = tmp_path / "result_0.txt", tmp_path / "ck"
    proc = subprocess.run([sys.executable, "-m", "resnet.cli", "train", *map(str, TINY), "--data", str(ffcv_data),
                           "--log-file", str(log), "--epochs", "2", "--eval-every-epochs", "2",
                           "--target-accuracy", "0.01", "--seed", "1", "--checkpoint-dir", str(ckpt)],
                          cwd=REPO, env=no_jit(), capture_output=True, text=True, timeout=600,
                          preexec_fn=limited_file_size(1_000_000))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: checkpoint" in proc.stderr and "training goes on" in proc.stderr
    assert run_stop(log)["metadata"]["status"] == "success"
    assert sorted(p.name for p in ckpt.glob("*")) == ["finished.json", "owner.lock"]   # no half-written file
    assert '"checkpoint_written": false' in (ckpt / "finished.json").read_text()
    assert check_log(log)[0]


def test_a_stop_without_checkpoint_folder_does_not_promise_a_resume(ffcv_data, tmp_path):
    log = tmp_path / "result_0.txt"
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, TINY), "--data",
                             str(ffcv_data), "--log-file", str(log), "--epochs", "50", "--eval-every-epochs", "50",
                             "--target-accuracy", "1.0", "--seed", "1"], cwd=REPO, env=no_jit(),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and "epoch_start" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4
    assert "--resume" not in err and "no checkpoint" in err
    assert run_stop(log)["metadata"]["reason"] == "signal SIGINT"


def test_a_non_finite_loss_is_never_checkpointed(ffcv_data, tmp_path):
    ckpt, log = tmp_path / "ck", tmp_path / "nan.txt"
    out = cli("train", *TINY, "--data", ffcv_data, "--log-file", log, "--epochs", "2", "--eval-every-epochs", "1",
              "--lr", "1e30", "--warmup-epochs", "0", "--seed", "1", "--checkpoint-dir", ckpt,
              "--checkpoint-every-minutes", "0.0001", check=False)
    assert out.returncode == 3, out.stderr
    for path in ckpt.glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_config_without_a_gpu_fails_in_one_line(ffcv_data, tmp_path):
    out = cli("train", *TINY, "--data", ffcv_data, "--results-dir", tmp_path / "r", "--device", "cuda",
              check=False)
    assert out.returncode == 1
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and "no CUDA GPU is visible" in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_an_error_after_run_start_ends_the_log_with_aborted_and_its_reason(synth_tree, tmp_path):
    """One process, a JPEG that fails to decode in the middle of the first epoch: run_stop aborted with the
    reason in the log, one console line, exit 1."""
    tree = tmp_path / "tree"
    shutil.copytree(synth_tree, tree)
    for victim in sorted((tree / "train").rglob("*.JPEG"))[10:14]:
        victim.write_bytes(b"not a jpeg at all")
    log = tmp_path / "result_0.txt"
    out = cli("train", *TINY, "--loader", "torchvision", "--workers", "0", "--data", tree, "--log-file", log,
              "--epochs", "2", "--eval-every-epochs", "1", "--target-accuracy", "1.0", "--seed", "1", check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    assert len(error_lines(out.stderr)) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    stop = run_stop(log)
    assert stop["metadata"]["status"] == "aborted" and stop["metadata"]["reason"]
    assert [e["key"] for e in events(log)].count("run_start") == 1


# ---- a rerun continues, and never overwrites another run's checkpoint (RESUME auto|0|1) ----


def test_sighup_is_a_stop_like_sigterm(ffcv_data, tmp_path):
    """A closed terminal or a dropped ssh sends SIGHUP: checkpoint, run_stop aborted with the signal, exit 4."""
    resumable(ffcv_data, tmp_path, stop=signal.SIGHUP)
    stop = run_stop(tmp_path / "first.txt")["metadata"]
    assert (stop["status"], stop["reason"]) == ("aborted", "signal SIGHUP")


def test_rerunning_the_same_command_continues_the_interrupted_run(ffcv_data, tmp_path):
    args, ckpt = resumable(ffcv_data, tmp_path)
    out = cli("train", *args, "--log-file", tmp_path / "again.txt", check=False)    # RESUME=auto: the default
    assert out.returncode == 2, out.stderr                                          # target 1.0: epochs exhausted
    assert "resuming the interrupted run in" in out.stderr
    start = next(e for e in events(tmp_path / "again.txt") if e["key"] == "run_start")
    assert "resumed_from_epoch" in start["metadata"]
    assert start["time_ms"] == next(e for e in events(tmp_path / "first.txt") if e["key"] == "run_start")["time_ms"]
    assert torch.load(ckpt / "last.pt", weights_only=True)["progress"]["finished"]
    fresh = cli("train", *args, "--log-file", tmp_path / "fresh.txt", check=False)  # a finished run: start anew
    assert fresh.returncode == 2 and "resuming" not in fresh.stderr, fresh.stderr


@pytest.mark.parametrize("mode, change, message", [
    ("0", [], "--resume 0 (RESUME): {ckpt} holds an unfinished run (seed 5"),
    ("auto", ["--epochs", "4"], "--resume: recipe epochs is 4 here but 3 in the checkpoint of an unfinished run"),
])
def test_a_new_run_never_overwrites_an_unfinished_run(interrupted, tmp_path, mode, change, message):
    args, ckpt = interrupted
    before = (ckpt / "last.pt").read_bytes()
    out = cli("train", *args, *change, "--resume", mode, "--log-file", tmp_path / "new.txt", check=False)
    assert out.returncode == 1
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and message.format(ckpt=ckpt / "last.pt") in lines[0], out.stderr
    assert not (tmp_path / "new.txt").exists() and (ckpt / "last.pt").read_bytes() == before


@pytest.fixture(scope="module")
def same_shape_other_images(ffcv_data, tmp_path_factory):
    """A data set with the classes and counts of `ffcv_data` but other images (another synth seed)."""
    from resnet.data.prepare import prepare
    from resnet.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("other")
    make_synthetic(root / "tree", classes=4, train_per_class=48, val_per_class=12, size_px=48, seed=2, progress=False)
    prepare(root / "tree", root / "ffcv", workers=2, log=open("/dev/null", "w"))
    return root / "ffcv"


def test_the_data_identity_is_the_images_not_the_shape(interrupted, same_shape_other_images, ffcv_data, tmp_path):
    """Same class names and counts, other images: the resume is refused (naming the digest), and a .beton swapped
    in from the other set fails the manifest check."""
    from resnet.data.loaders import LoaderSpec, make_loaders
    from resnet.errors import DataError

    args, ckpt = interrupted
    data = args.index("--data") + 1
    moved = [*args[:data], same_shape_other_images, *args[data + 1:]]
    out = cli("train", *moved, "--resume", "--log-file", tmp_path / "other.txt", check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1 and "data digest is" in lines[0], out.stderr
    mixed = Path(shutil.copytree(ffcv_data, tmp_path / "mixed"))
    shutil.copy(same_shape_other_images / "val.beton", mixed / "val.beton")
    with pytest.raises(DataError, match=r"val.beton: holds other images than manifest.json says"):
        make_loaders(mixed, LoaderSpec(batch_size=4, train_crop_px=32, crop_scale_min=0.08, eval_crop_px=32,
                                       eval_resize_px=36))


def test_other_images_with_the_same_names_and_sizes_are_another_data_set(synth_tree, tmp_path):
    """Issue 31: a copy of the folders whose every image has other bytes (same names, same sizes) has another
    digest, so a checkpoint of one set is never continued on the other; the same bytes keep the digest."""
    from resnet.data.folders import dataset_digest, scan_dataset

    copy = Path(shutil.copytree(synth_tree, tmp_path / "copy"))

    def digest(root):
        classes, train, val, _ = scan_dataset(root)
        return dataset_digest(root, classes, train, val)

    assert digest(copy) == digest(synth_tree)
    images = sorted(p for p in copy.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg"))
    assert len(images) == 4 * (48 + 12)
    for image in images:
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0xFF                    # other pixels, the same name and byte size
        image.write_bytes(bytes(data))
    assert digest(copy) != digest(synth_tree)


# ---- the result log belongs to one run ----


def test_a_result_log_is_one_runs_alone(ffcv_data, tmp_path):
    """A log held by a running trainer refuses a second writer; a link (even dangling) is never followed; a
    missing folder is created."""
    from resnet.mlperf import LogWriteError, open_exclusive

    held = open_exclusive(tmp_path / "held.txt")
    with pytest.raises(LogWriteError, match="another run is writing it"):
        open_exclusive(tmp_path / "held.txt")
    held.close()
    link = tmp_path / "result_0.txt"
    link.symlink_to(tmp_path / "elsewhere.txt")
    args = [*TINY, "--data", ffcv_data, "--epochs", "1", "--eval-every-epochs", "1", "--target-accuracy", "0.01"]
    out = cli("train", *args, "--log-file", link, check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1 and f"--log-file: {link} already exists as a link" in lines[0]
    assert not (tmp_path / "elsewhere.txt").exists()
    nested = tmp_path / "new" / "folder" / "result_0.txt"
    assert cli("train", *args, "--log-file", nested, check=False).returncode == 0 and run_stop(nested)


def test_a_stop_after_a_failed_checkpoint_write_says_so(ffcv_data, tmp_path):
    """The disk takes the log (KBs) but not the checkpoint (MBs): the stop line must not claim a checkpoint."""
    args = [*TINY, "--data", ffcv_data, "--epochs", "30", "--eval-every-epochs", "30", "--target-accuracy", "1.0",
            "--checkpoint-dir", tmp_path / "ck", "--log-file", tmp_path / "a.txt"]
    proc = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, args)], cwd=REPO, env=no_jit(),
                            stderr=subprocess.PIPE, text=True, preexec_fn=limited_file_size(1 << 20))
    seen = []
    for line in proc.stderr:               # wait for the event: the first epoch's failed checkpoint
        seen.append(line)
        if "not written" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    err = "".join(seen) + rest
    assert proc.returncode == 4, err
    assert "the checkpoint could NOT be written" in err and "checkpoint written" not in err


@pytest.mark.parametrize("flag, value", [("--org", "Acme Inc"), ("--platform", "DGX A100/8")])
def test_names_package_would_refuse_are_refused_before_training(ffcv_data, tmp_path, flag, value):
    """`package` accepts only plain names: a run under another could never be submitted, so it never starts."""
    out = cli("train", *TINY, "--data", ffcv_data, flag, value, "--log-file", tmp_path / "r.txt", check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1 and f"{flag} (" in lines[0] and "is not a plain name" in lines[0]
    assert not (tmp_path / "r.txt").exists()


# ---- a checkpoint has one owner, one format, whole bytes; an ended run stays ended ----


def wait_for(predicate, proc, timeout_s=300):
    """Until `predicate()` holds (an event: a file, a line), failing if `proc` ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail(f"no event after {timeout_s} s")


def test_two_trainers_never_share_a_checkpoint_folder(ffcv_data, tmp_path):
    """Trainer A (seed 1) owns CHECKPOINT_DIR while it lives: trainer B (seed 2) is refused in one line naming A,
    before it claims a log. After A's stop, B's seed 2 still never adopts A's seed-1 run (it says how to continue
    it); A's own seed continues it. No lost seed, no shared last.pt."""
    from resnet.checkpoint import holder

    ckpt = tmp_path / "ck"
    args = [*TINY, "--data", ffcv_data, "--epochs", "3", "--eval-every-epochs", "3", "--target-accuracy", "1.0",
            "--checkpoint-dir", ckpt]
    a = subprocess.Popen([sys.executable, "-m", "resnet.cli", "train", *map(str, args), "--seed", "1",
                          "--log-file", tmp_path / "a.txt"], cwd=REPO, env=no_jit(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (ckpt / "last.pt").exists(), a)
        a.send_signal(signal.SIGSTOP)   # A lives (stopped) while B tries, however long B takes on a busy machine
        assert holder(ckpt).startswith(f"pid {a.pid} on host ")
        b = cli("train", *args, "--seed", "2", "--log-file", tmp_path / "b.txt", check=False)
        lines = error_lines(b.stderr)
        assert b.returncode == 1 and len(lines) == 1, b.stderr
        assert f"{ckpt}: held by a live run (pid {a.pid} on host" in lines[0] and "CHECKPOINT_DIR" in lines[0]
        assert not (tmp_path / "b.txt").exists()
    finally:
        a.send_signal(signal.SIGTERM)
        a.send_signal(signal.SIGCONT)
        _, err = a.communicate(timeout=120)
    assert a.returncode == 4 and "SIGTERM: checkpoint written" in err, err
    assert holder(ckpt) is None
    before = (ckpt / "last.pt").read_bytes()
    b = cli("train", *args, "--seed", "2", "--log-file", tmp_path / "b.txt", check=False)   # RESUME=auto
    lines = error_lines(b.stderr)
    assert b.returncode == 1 and len(lines) == 1, b.stderr
    assert "holds the unfinished run of seed 1" in lines[0] and "SEED=1" in lines[0], lines[0]
    assert not (tmp_path / "b.txt").exists() and (ckpt / "last.pt").read_bytes() == before
    again = cli("train", *args, "--seed", "1", "--log-file", tmp_path / "a2.txt", check=False)
    assert again.returncode == 2 and "resuming the interrupted run" in again.stderr, again.stderr
    assert next(e for e in events(tmp_path / "a2.txt") if e["key"] == "seed")["value"] == 1


def test_an_async_save_writes_the_state_of_its_moment(tmp_path):
    """save() returns once the state is copied to host memory: changing the weights while the thread writes does
    not reach the file; the next save waits for the previous write."""
    from resnet.checkpoint import RunProgress, Saver, load

    model = torch.nn.Linear(512, 512)
    saver = Saver(tmp_path / "last.pt", None, True, RunProgress(3, {}, run_start_ms=1))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    saver.save({"model": model}, step=1, epoch=1, batches_done=0, epoch_rng=None)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert saver.wait()
    written = load(tmp_path / "last.pt")["model"]
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    saver.save({"model": model}, step=2, epoch=2, batches_done=0, epoch_rng=None)
    saver.save({"model": model}, step=3, epoch=3, batches_done=0, epoch_rng=None, wait=True)
    assert load(tmp_path / "last.pt")["progress"]["step"] == 3


def tensor_offset(path: Path) -> int:
    """Where the bytes of the checkpoint's largest tensor start inside its zip file (stored uncompressed)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def rewrite(path: Path, change) -> None:
    """`change` the checkpoint's state, as the version that would write it does (with a valid checksum)."""
    from resnet.checkpoint import tensor_digest

    state = torch.load(path, weights_only=True)
    change(state)
    if "checksum" in state:
        state["checksum"] = tensor_digest(state)
    torch.save(state, path)


CHECKPOINT_DEFECTS = {
    "previous format": (lambda s: [s.pop("format_version"), s.pop("checksum")],
                        "written by an earlier mlperf-resnet (format 1; this version reads format 2) and cannot be "
                        "continued here; move it away"),
    "future format": (lambda s: s.update(format_version=3),
                      "written by a newer mlperf-resnet (format 3; this version reads format 2); continue it with "
                      "that version"),
    "unknown recipe field": (lambda s: s["progress"]["identity"]["recipe"].update(sharpness=0.5),
                             "the checkpoint's recipe has a field 'sharpness' that this version does not know"),
    "corrupted tensor bytes": (None, "its tensors do not match the checksum written with them"),
}


@pytest.mark.parametrize("defect", CHECKPOINT_DEFECTS)
def test_a_checkpoint_this_version_cannot_continue_is_refused_in_one_line(interrupted, tmp_path, defect):
    """Through the re-run a user makes (RESUME=auto): refused before any log, the checkpoint left as it was."""
    args, ckpt = interrupted
    mine = Path(shutil.copytree(ckpt, tmp_path / "ck", ignore=shutil.ignore_patterns("owner.lock")))
    change, message = CHECKPOINT_DEFECTS[defect]
    if change:
        rewrite(mine / "last.pt", change)
    else:
        with open(mine / "last.pt", "r+b") as f:
            f.seek(tensor_offset(mine / "last.pt"))
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    before = (mine / "last.pt").read_bytes()
    out = cli("train", *args, "--checkpoint-dir", mine, "--log-file", tmp_path / "new.txt", check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "new.txt").exists() and (mine / "last.pt").read_bytes() == before


def test_a_last_pt_that_is_a_folder_is_named(ffcv_data, tmp_path):
    (tmp_path / "ck" / "last.pt").mkdir(parents=True)
    out = cli("train", *TINY, "--data", ffcv_data, "--checkpoint-dir", tmp_path / "ck", "--log-file",
              tmp_path / "r.txt", check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert f"{tmp_path / 'ck' / 'last.pt'} is not a checkpoint file" in lines[0] and "--resume" not in lines[0]
    assert not (tmp_path / "r.txt").exists()


def test_an_ended_run_whose_final_save_failed_is_not_continued(ffcv_data, tmp_path):
    """The run ended, but its last checkpoint write failed: what is left is an earlier, unfinished checkpoint of
    it. finished.json (written with run_stop) keeps a plain re-run from continuing it, and --resume says why."""
    args, ckpt = resumable(ffcv_data, tmp_path)
    shutil.copy(ckpt / "last.pt", tmp_path / "earlier.pt")
    out = cli("train", *args, "--log-file", tmp_path / "resumed.txt", check=False)
    assert out.returncode == 2 and "resuming the interrupted run" in out.stderr, out.stderr
    shutil.copy(tmp_path / "earlier.pt", ckpt / "last.pt")          # as if the final write had failed
    again = cli("train", *args, "--resume", "1", "--log-file", tmp_path / "insist.txt", check=False)
    assert again.returncode == 1 and "already ended" in again.stderr, again.stderr
    fresh = cli("train", *args, "--log-file", tmp_path / "fresh.txt", check=False)
    assert fresh.returncode == 2 and "resuming" not in fresh.stderr, fresh.stderr
    assert "resumed_from_epoch" not in next(e for e in events(tmp_path / "fresh.txt")
                                            if e["key"] == "run_start").get("metadata", {})


def test_a_one_class_data_set_is_refused(tmp_path):
    from resnet.data.synth import make_synthetic

    make_synthetic(tmp_path / "tree", classes=1, train_per_class=32, val_per_class=8, size_px=48, seed=1,
                   progress=False)
    out = cli("train", *TINY, "--loader", "torchvision", "--workers", "0", "--data", tmp_path / "tree",
              "--log-file", tmp_path / "r.txt", "--target-accuracy", "0.5", check=False)
    lines = error_lines(out.stderr)
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert "has 1 class" in lines[0] and "at least 2 classes" in lines[0] and "DATADIR" in lines[0]
    assert not (tmp_path / "r.txt").exists()


def test_two_nodes_with_different_settings_fail_at_the_start(synth_tree, tmp_path):
    """Node 1 launched with another EPOCHS: both nodes stop before run_start, naming the setting."""
    from tests.test_run_and_time import free_port, outputs, start_run_and_time

    common = {"LOADER": "torchvision", "DATADIR": str(synth_tree), "LOGDIR": str(tmp_path), "NEXP": "1",
              "SEED": "21", "DGXNNODES": "2", "DGXNGPU": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port())}
    nodes = [start_run_and_time({**common, "NODE_RANK": str(rank), "EPOCHS": str(2 + rank)}) for rank in (0, 1)]
    outs = outputs(nodes, timeout=600)
    assert all(n.returncode != 0 for n in nodes), outs
    expected = "--epochs (EPOCHS): 2 on rank 0 but 3 on rank 1; every node must be launched with the same settings"
    assert all(expected in err for _, err in outs), [err[-2000:] for _, err in outs]
    assert not any(f.read_text() for f in tmp_path.rglob("result_*.txt")), "a run started"
