"""The work area: content-addressed folders where each step's outputs live until stored.

Every generation and post-processing step writes into a folder named by a hash of what shapes
its output: its inputs (the job, engine settings and model included) and the source of the
module that makes it. A step whose folder already holds its `result.json` returns that result
instead of running again, so a failed or killed run, re-run with the same brief, pays only for
what had not finished, and changing a prompt, seed or model redoes only what depends on it.

The result file is written last (like a bundle's manifest), so a folder without one is an
unfinished step and is simply redone. With an s3:// storage target, finished folders are
mirrored to `<prefix>/.work/` and looked up there too, so steps run by workers on other
machines share their outputs through the store, never through Prefect task results. When
the store cannot be reached, a run on one machine carries on with its local folders (one
warning, then the mirror rests a while); a dispatched run, whose workers hand files over
only through the mirror, fails instead.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tasks.disclosure import Disclosure
from tasks.files import atomic_path
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

    def step(self, kind: str, inputs: dict, *code) -> Step:
        """The folder of one step; `code` are the modules and functions whose source shapes its output."""
        return Step(self, kind, step_key(kind, inputs, code))


class Step:
    """One step's folder: look for a finished result, or make files and save the result."""

    def __init__(self, workspace: Workspace, kind: str, key: str):
        self.workspace, self.kind, self.key = workspace, kind, key
        self.folder = Path(workspace.root) / kind / key

    def file(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    def load(self, model: type[R]) -> R | None:
        """The finished result, from the local folder or else the remote mirror; None if unfinished."""
        local = self.folder / RESULT_NAME
        if not local.is_file() and self.workspace.remote:
            self._mirror(self._download)
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
        """Record a finished step (result file last) and mirror it when there is a remote."""
        result = result.model_copy(update={"key": self.key, "reused": False})
        with atomic_path(self.folder / RESULT_NAME) as tmp:
            tmp.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        if self.workspace.remote:
            self._mirror(self._upload)
        return result

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
            self.folder.mkdir(parents=True, exist_ok=True)
            for name in [n for n in names if n != RESULT_NAME] + [RESULT_NAME]:
                with atomic_path(self.folder / name) as tmp:
                    client.download_file(location.bucket, location.key(name), str(tmp))
