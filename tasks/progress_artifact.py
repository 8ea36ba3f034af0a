"""A generation's progress in the Prefect UI: a progress artifact on its task run, written by a thread
of its own.

Why a thread: each write is an API call (40-70 ms on a busy 2-core machine). Made from the denoising
loop's step callback, it held the pipeline up that long at every write; here the loop only records its
step, and the writer wakes every PROGRESS_EVERY_S to write what changed.
Why the first write waits PROGRESS_EVERY_S too: a progress bar is for watching work that takes a while
(tqdm's `delay` does the same); a generation done sooner writes none, and its task run says it completed.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from tasks.jobs import Job

PROGRESS_EVERY_S = 0.5
_writers: set[threading.Thread] = set()  # those still writing: a temporary server waits for them


def wait_for_writers(timeout: float) -> None:
    """Let the last writes land before the API they go to stops (a command's temporary server)."""
    deadline = time.monotonic() + timeout
    for writer in list(_writers):
        writer.join(max(0.0, deadline - time.monotonic()))


class ProgressArtifact:
    """`with ProgressArtifact(job) as on_step:` then `on_step(i)` after denoising step i.

    Inside a task run a writer thread keeps the artifact up to date and, once the block ends, makes
    its last write (the steps reached: 100 % unless the generation failed) and stops. The generation
    does not wait for that write; the process does (the thread is not a daemon), and so does a
    command's temporary server before it stops (`wait_for_writers`). Outside a task run, no writes.
    """

    def __init__(self, job: Job):
        self.job = job
        self.description = f"{job.role}: {job.steps} denoising steps"
        self.every = PROGRESS_EVERY_S
        self.done_steps = 0
        self.writer: threading.Thread | None = None
        self._ended = threading.Event()

    def on_step(self, step: int) -> None:
        self.done_steps = step + 1  # the denoising loop only stores a number

    def __enter__(self):
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is not None:
            context = contextvars.copy_context()  # the task run's context: the artifact is filed under it
            self.writer = threading.Thread(
                target=context.run, args=(self._write_until_ended,), name=f"progress-{self.job.role}"
            )
            _writers.add(self.writer)
            self.writer.start()
        return self.on_step

    def __exit__(self, *exc_info) -> None:
        self._ended.set()

    def _write_until_ended(self) -> None:
        try:
            self._write_progress()
        finally:
            _writers.discard(threading.current_thread())

    def _write_progress(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        artifact_id, written = None, 0
        while True:
            ended = self._ended.wait(self.every)
            done = self.done_steps
            if done != written and (artifact_id is not None or not ended):
                percent = min(100.0 * done / self.job.steps, 100.0)
                try:
                    if artifact_id is None:
                        artifact_id = create_progress_artifact(progress=percent, description=self.description)
                    else:
                        update_progress_artifact(artifact_id, progress=percent)
                except Exception as err:  # noqa: BLE001 - the progress bar is lost, not the generation
                    logging.getLogger(__name__).warning("%s: progress not shown: %s", self.description, err)
                    return
                written = done
            if ended:
                return
