"""The work area: content-addressed folders where each step's outputs live until stored.

Every generation and post-processing step writes into a folder named by a hash of what shapes
its output: its inputs (the job, engine settings and model included) and the source of the
module that makes it. A step whose folder already holds its `result.json` returns that result
instead of running again, so a failed or killed run, re-run with the same brief, pays only for
what had not finished, and changing a prompt, seed or model redoes only what depends on it.

A step's files and its result file (written last, like a bundle's manifest) are made in a
folder of the writer's own, renamed to the step's folder once whole: two runs of the same brief
at once (a schedule and a trigger) may both make a step, the first to finish publishes it, and
the other takes that result and drops its own, so every reader of a step sees one set of files.

With an s3:// storage target, finished folders are mirrored to `<prefix>/.work/` and looked up
there too, so steps run by workers on other machines share their outputs through the store,
never through Prefect task results. When the store cannot be reached, a run on one machine
carries on with its local folders (one warning, then the mirror rests a while); a dispatched
run, whose workers hand files over only through the mirror, fails instead.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import shutil
import time
from contextlib import AbstractContextManager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tasks.disclosure import Disclosure
from tasks.files import atomic_path, exclusive_lock, temp_folder_beside
from tasks.logs import run_logger

RESULT_NAME = "result.json"
WORK_DIR = ".work"
MIRROR_REST_SECONDS = 300  # after a failure, skip the mirror this long: each try costs a connect timeout and retries
_mirror_down: dict[str, float] = {}  # remote -> when it last failed (this process)


class StepResult(BaseModel):
    """What every step returns: its output file and the key of the folder it lives in."""

    path: str
    key: str = ""
    reused: bool = False  # True when found finished in the work area instead of made now
    disclosure: Disclosure | None = None  # embedded in the file; handed on to files derived from it
    files: dict[str, str] = {}  # other files the step made beside `path`, by name (e.g. the reverse-trace latents)


R = TypeVar("R", bound=StepResult)


@lru_cache(maxsize=64)
def _source_hash(code) -> str:
    return hashlib.sha256(inspect.getsource(code).encode()).hexdigest()


def step_key(kind: str, inputs: dict, code: tuple) -> str:
    """Hash of the step kind, its inputs and the source of the code (modules, functions) that makes its output."""
    sources = [_source_hash(m) for m in code]
    canonical = json.dumps({"kind": kind, "inputs": inputs, "code": sources}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


class Workspace(BaseModel):
    """Where step folders live: a local root, mirrored to an s3:// prefix when one is given."""

    root: str
    remote: str | None = None  # s3://bucket/prefix/.work
    mirror_required: bool = False  # dispatched: the mirror is how files reach the bundle flow, so it must work

    @classmethod
    def for_storage(cls, out: str | None, storage: str | None) -> Workspace:
        from tasks.s3 import is_s3_url
        from tasks.storage import out_root

        remote = f"{storage.rstrip('/')}/{WORK_DIR}" if is_s3_url(storage) else None
        return cls(root=str((out_root(out, storage) / WORK_DIR).resolve()), remote=remote)

    @classmethod
    def for_worker(cls, remote: str | None) -> Workspace:
        """A GPU worker's work area: its own folder (GENBUNDLE_OUT, or a local storage setting, on its
        machine) with the dispatcher's mirror, if any, to hand files over through. Nothing names a
        folder of the dispatcher's machine: without a mirror, only a worker sharing that folder helps."""
        from tasks.storage import out_root

        return cls(root=str((out_root() / WORK_DIR).resolve()), remote=remote, mirror_required=remote is not None)

    def step(self, kind: str, inputs: dict, *code) -> Step:
        """The folder of one step; `code` are the modules and functions whose source shapes its output."""
        return Step(self, kind, step_key(kind, inputs, code))

    def lock(self, name: str) -> AbstractContextManager[None]:
        """A lock for what runs sharing this work area must do in turn (on this machine), held for a `with` block."""
        return exclusive_lock(Path(self.root) / "locks" / f"{name}.lock")


class Step:
    """One step's folder: look for a finished result, or make files and save the result."""

    def __init__(self, workspace: Workspace, kind: str, key: str):
        self.workspace, self.kind, self.key = workspace, kind, key
        self.folder = Path(workspace.root) / kind / key
        self._staging: Path | None = None  # this writer's own folder, made by the first file()

    def file(self, name: str) -> Path:
        """Where to write one of the step's files: in this writer's own folder until save() publishes it."""
        if self._staging is None:
            self._staging = temp_folder_beside(self.folder)
        return self._staging / name

    def load(self, model: type[R]) -> R | None:
        """The finished result, from the local folder or else the remote mirror; None if unfinished."""
        if not (self.folder / RESULT_NAME).is_file() and self.workspace.remote:
            self._mirror(self._download)
        return self._local(model)

    def _local(self, model: type[R]) -> R | None:
        """The finished result in the local folder, every file it names there; None if not."""
        local = self.folder / RESULT_NAME
        if not local.is_file():
            return None
        result = model.model_validate_json(local.read_text(encoding="utf-8"))
        # Re-rooted: the folder may come from another machine.
        path = self.folder / Path(result.path).name
        files = {name: str(self.folder / Path(p).name) for name, p in result.files.items()}
        if not all(Path(p).is_file() for p in [path, *files.values()]):
            return None
        return result.model_copy(update={"path": str(path), "files": files, "reused": True})

    def save(self, result: R) -> R:
        """Record a finished step (result file last), publish its folder and mirror it when there is a remote.

        Returns the result as published: this one, or the one another writer published first.
        """
        staging = self.file(RESULT_NAME).parent
        data = result.model_dump() | {"key": self.key, "reused": False}
        result = type(result).model_validate(_moved(data, str(staging), str(self.folder)))  # the paths once published
        with atomic_path(staging / RESULT_NAME) as tmp:
            tmp.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        self._staging = None
        if (first := self._publish(staging, type(result))) is not None:
            return first
        if self.workspace.remote:
            self._mirror(self._upload)
        return result

    def _publish(self, staging: Path, model: type[R]) -> R | None:
        """Rename a whole folder (result file in) to the step's folder: None when done, or the result
        another writer published first (then `staging` is dropped: the first one's files are the step's)."""
        for _ in range(3):
            try:
                os.rename(staging, self.folder)  # atomic, and refused when a folder with files is there
                return None
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if (first := self._local(model)) is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return first
            # A folder with no usable result: files deleted by hand, or a run killed while steps were
            # still written in place. Set aside whole (the name is unique), then removed.
            aside = temp_folder_beside(self.folder)
            try:
                os.replace(self.folder, aside)
            except FileNotFoundError:  # another writer cleared it first
                pass
            shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"work area: {self.folder} was replaced three times while this run published it")

    # --- the s3 mirror ---------------------------------------------------------------------

    def _mirror(self, transfer) -> None:
        """Run one transfer with the mirror; unless it is required, a failure is a warning, not the end."""
        from tasks.s3 import StorageError

        remote, required = self.workspace.remote, self.workspace.mirror_required
        if not required and time.monotonic() - _mirror_down.get(remote, float("-inf")) < MIRROR_REST_SECONDS:
            return
        try:
            transfer()
        except StorageError as err:
            if required:
                raise
            _mirror_down[remote] = time.monotonic()
            run_logger(__name__).warning(
                "work area mirror %s skipped for %d s, the run goes on locally: %s", remote, MIRROR_REST_SECONDS, err
            )

    def _remote_prefix(self):
        from tasks.s3 import parse_s3_url

        return parse_s3_url(self.workspace.remote).child(self.kind).child(self.key)

    def _upload(self) -> None:
        from tasks.s3 import s3_client, storage_errors

        location = self._remote_prefix()
        files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.name != RESULT_NAME)
        with storage_errors(location):
            client = s3_client()
            for path in [*files, self.folder / RESULT_NAME]:  # the result file last
                client.upload_file(str(path), location.bucket, location.key(path.name))

    def _download(self) -> None:
        from tasks.s3 import s3_client, storage_errors

        location = self._remote_prefix()
        with storage_errors(location):
            client = s3_client()
            listing = client.list_objects_v2(Bucket=location.bucket, Prefix=location.key() + "/")
            names = [o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])]
            if RESULT_NAME not in names:
                return
            staging = temp_folder_beside(self.folder)
            try:
                for name in names:
                    client.download_file(location.bucket, location.key(name), str(staging / name))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        self._publish(staging, StepResult)  # one published first holds the same step: either is fine


def _moved(value, old: str, new: str):
    """`value` (a result as plain data) with every path under the folder `old` moved under `new`."""
    if isinstance(value, str):
        return new + value[len(old) :] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return value
