"""How the trainer stops on a signal: SIGTERM/SIGINT/SIGHUP set a flag that the loop answers at its next check
(checkpoint, run_stop aborted, exit 4); during set-up the signal ends it at once. And the console line that
says what was kept: a checkpoint is claimed only when one was written."""
import signal

from resnet.data.workers import STOP_SIGNALS   # a closed terminal or ssh sends SIGHUP


class SetUpStopped(BaseException):
    """A stop signal during set-up: raised from the handler, so that a long warm-up (compiling) ends at once."""


class StopRequest:
    """SIGTERM/SIGINT/SIGHUP set a flag; the loop checkpoints and stops at its next check. During set-up (until
    `setting_up` is cleared) the signal also raises SetUpStopped: nothing is logged or checkpointed yet."""

    def __init__(self):
        self.signal, self.setting_up = None, True
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        if self.setting_up:
            raise SetUpStopped(self.signal)


def stop_line(stop: StopRequest, saver, where: str) -> str:
    """What the console says at a stop: a checkpoint is claimed only when one was written."""
    who = stop.signal or "a stop on another rank"
    if saver is None:
        return f"{who}: stopped {where}: nothing was timed or logged, no checkpoint written"
    if not saver.path:
        return f"{who}: stopped {where} (no CHECKPOINT_DIR, so no checkpoint); run logged as aborted"
    if not saver.last_ok:
        kept = "the previous one is kept" if saver.path.is_file() else "there is none"
        return f"{who}: stopped {where}; the checkpoint could NOT be written (see the warning above; {kept}); run " \
               "logged as aborted"
    return (f"{who}: checkpoint written {where}; run logged as aborted; run the same command again to continue "
            "(RESUME=auto)")
