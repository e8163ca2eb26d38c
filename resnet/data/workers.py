"""Data worker processes (prepare's writers, torchvision's DataLoader processes): they never outlive the process
that started them, and a stop signal is that process's to answer."""
import ctypes
import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)   # the trainer's: it checkpoints, then stops


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG), else poll."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError
    except (OSError, AttributeError):  # not Linux: a thread that watches the parent
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader process leaves SIGINT/SIGHUP, and SIGTERM from anyone but its trainer, to the trainer. A stop
    signal sent to the trainer's whole process group (the launcher, a terminal's Ctrl-C, SLURM) would otherwise kill
    it (PyTorch's worker dies on SIGTERM) and end the run with an error instead of a checkpoint. The trainer's own
    SIGTERM still ends it: Python's exit terminates the live daemon processes and waits for them, forever if they
    ignored it. The kernel ends any worker whose trainer died."""
    trainer = os.getppid()
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below (threads inherit it)

    def answer_sigterm():
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
            pass
        os._exit(0)  # a clean end: torch's SIGCHLD handler reports any other as the worker's failure

    threading.Thread(target=answer_sigterm, daemon=True).start()
    die_with_parent(trainer)
