"""Preemption and Ctrl-C: stop training cleanly on SIGINT, SIGUSR1, SIGUSR2 or SIGTERM.

SLURM sends SIGUSR1 before the time limit (``--signal=B:USR1@120`` in the batch
scripts, forwarded to the training as SIGTERM), submitit's launcher SIGUSR2
(``--signal=USR2@120``), a preemption SIGTERM. The handler only sets an event; the
training loop sees it at the next step boundary, writes ``checkpoints/last.pt``, and
the run ends with ``status.json`` ``"stopped"``, no ``metrics.json``, and exit code
:data:`STOP_EXIT_CODE`. Then, and only then, the handler that was installed before
(submitit's, which requeues the job) is called with the signal, so submitit requeues a
job whose checkpoint is already on disk.

Ctrl-C (SIGINT) stops the same way; a second Ctrl-C raises ``KeyboardInterrupt`` at once,
for a user who will not wait for the step to finish (the last checkpoint written stays).

Handlers can only be installed from the main thread; elsewhere :class:`StopOnSignals`
does nothing but provide the event. Leaving the ``with`` block restores the previous
handlers, so sweeps running several jobs in one process install and remove them per job.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: Exit code of a run stopped by a signal after writing its checkpoint: ``EX_TEMPFAIL``
#: of ``sysexits.h`` ("temporary failure, retry"). Distinct from 0 (completed), 1 (error)
#: and 128 + N (killed by signal N), so a wrapper script can tell that a requeue resumes it.
STOP_EXIT_CODE = 75

#: The signals that stop training (SIGUSR2 is submitit's default preemption signal, SIGINT Ctrl-C).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class StopOnSignals:
    """Context manager: ``event`` is set when one of ``signals`` arrives.

    Example::

        with StopOnSignals() as stop:
            trainer = Trainer(..., stop_event=stop.event)
            if trainer.fit() == "stopped":
                ...               # checkpoint written, status recorded
                stop.chain()      # hand the signal to the previous handler (submitit)

    ``received`` is the first signal number caught (``None`` if none).
    """

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS, event: threading.Event | None = None) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.event = event or threading.Event()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: logging or I/O from a signal handler can deadlock on their locks.
        if signum == signal.SIGINT and self.event.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: abort now
        if self.received is None:
            self.received = signum
        self.event.set()

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: stop signals are not handled")
            return self
        for sig in self.signals:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers found on entry (idempotent)."""
        if not self.installed:
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.installed = False

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def chain(self) -> None:
        """Call the handler that was installed before ours for the received signal.

        Only Python callables are called (submitit's requeue handler, for instance);
        the default action and ``SIG_IGN`` are not replayed: the caller exits with
        :data:`STOP_EXIT_CODE` instead. The previous handler may itself exit or raise.
        """
        if self.received is None:
            return
        handler = self.previous.get(self.received)
        if callable(handler) and handler is not signal.default_int_handler:
            log.info("passing %s to the handler installed before training (%s)", self.signal_name,
                     getattr(handler, "__qualname__", repr(handler)))
            handler(self.received, None)
