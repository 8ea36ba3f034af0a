"""A `genbundle` command that failed or was interrupted ends within seconds.

Two things would keep it alive: Prefect's task runner waits for the tasks still running before
a flow's failure surfaces (a model's denoising loop in a thread cannot be interrupted), and a
signal that the kernel hands to another thread reaches Python's handler only when the main
thread next runs Python code, which a thread blocked on a future does not. So the watch is
armed by the first failed stage or by the signal itself (through a wake-up socket that the
C-level handler writes to at once, from any thread), and if the run has not wound down on its
own (logs flushed, run marked failed, temporary server stopped) EXIT_GRACE_S later, it prints
the one line and exits. The temporary server is ended with the process (see local_prefect).

Only the console command enables it (`flows.cli.entry`); tests that call `main` in-process are
never exited.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

EXIT_GRACE_S = 3.0  # after a failure or an interrupt, how long a run may take to wind down
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupted_line(signum: int) -> str:
    return f"error: interrupted ({signal.Signals(signum).name}); run the same command again to resume"


class ExitWatch:
    def __init__(self) -> None:
        self.enabled = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def enable(self) -> None:
        """From the main thread, before the run: watch for SIGINT and SIGTERM from any thread."""
        self.enabled = True
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._on_signals, args=(reader, writer), daemon=True, name="exit-watch").start()

    def arm(self, line: str, code: int) -> None:
        """Exit with `line` and `code` in EXIT_GRACE_S, unless the process has ended by then."""
        with self._lock:
            if self.enabled and self._timer is None:
                self._timer = threading.Timer(EXIT_GRACE_S, self._exit, (line, code))
                self._timer.daemon = True
                self._timer.start()

    def _on_signals(self, reader: socket.socket, writer: socket.socket) -> None:
        while data := reader.recv(16):
            for signum in data:
                if signum in STOP_SIGNALS:
                    self.arm(interrupted_line(signum), 128 + signum)

    @staticmethod
    def _exit(line: str, code: int) -> None:
        print(line, file=sys.stderr, flush=True)
        os._exit(code)


EXIT_WATCH = ExitWatch()
