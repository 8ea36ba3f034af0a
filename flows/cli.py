"""The `genbundle` command line: run a bundle, fetch models.

    genbundle run [BRIEF.yaml|json] [--title ... --author ... --seed N --models tiny|full --out DIR --allow-large]
    genbundle models pull --models tiny|full
    genbundle worker --pool gpu-image [--slots N] [--name NAME] [--with-healthcheck]

Exit codes: 0 done, 1 the run failed (or full models, the bucket or the server are missing), 2 the
input is invalid: a brief field, a flag, a GENBUNDLE_* setting, a file or an output folder named.
Each error is one line starting "error: " that names the field, flag or setting and the fix.
The input is checked, and full models looked for, before Prefect or any model is loaded.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from flows.exit_watch import EXIT_WATCH, interrupted_line
from tasks.brief import BriefError, load_brief_file, parse_brief
from tasks.errors import InputError
from tasks.progress import BRIEF_STAGE

FINISHING_STAGES = ["safety", "title", "caption", "trace", "normalise", "mux", "poster", "manifest", "store"]


def _set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise BriefError(f"--set {dotted}: {key} is not a section of the brief")
    data[leaf] = value


def _parse_set(item: str) -> tuple[str, object]:
    import yaml

    if "=" not in item:
        raise BriefError(f"--set {item}: expected FIELD=VALUE, e.g. --set cover.width=512")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise BriefError(f"--set {item}: no field before '=', e.g. --set cover.width=512")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else raw  # "512" -> 512, "true" -> True
    except yaml.YAMLError:  # "[", "a: b: c": take it as the text it was typed as; the field's check judges it
        return key.strip(), raw


def brief_from_args(args: argparse.Namespace):
    """File first, then flags on top; validated in one go."""
    data = load_brief_file(Path(args.brief)) if args.brief else {}
    flags = {
        "title": args.title,
        "author": args.author,
        "tagline": args.tagline,
        "seed": args.seed,
        "models": args.models,
        "cover.prompt": args.cover_prompt,
        "sound.prompt": args.sound_prompt,
        "video.prompt": args.video_prompt,
        "sound.duration": args.duration,
    }
    for key, value in flags.items():
        if value is not None:
            _set_dotted(data, key, value)
    for item in args.set or []:
        _set_dotted(data, *_parse_set(item))
    if not args.brief:  # flags only: the embedded sample brief, so `genbundle run` alone makes a bundle
        data.setdefault("title", "The Glowing Forest")
        data.setdefault("author", "Anonymous")
    return parse_brief(data)


def _progress_display(console, stages: list[str], log_file: Path):
    """A live table of stages, fed by the tasks' progress reports; a failed stage arms the exit watch."""
    from rich.live import Live
    from rich.table import Table

    state: dict[str, tuple[str, str, str]] = {s: ("waiting", "", "") for s in stages}
    marks = {"waiting": "[dim]·[/]", "running": "[yellow]…[/]", "done": "[green]✓[/]", "failed": "[red]✗[/]"}

    def render() -> Table:
        table = Table(box=None, show_header=False, padding=(0, 1))
        for name, (status, seconds, detail) in state.items():
            table.add_row(marks[status], name, seconds, detail)
        return table

    class ProgressTable(Live):
        def stop(self) -> None:
            super().stop()
            if not console.is_terminal:  # there the last row ends without a newline
                console.line()

    live = ProgressTable(render(), console=console, refresh_per_second=8, transient=False)

    def listener(stage) -> None:
        if stage.status == "failed":
            EXIT_WATCH.arm(f"run failed: {stage.name}: {stage.error} (details: {log_file})", 1)
        state[stage.name] = (stage.status, f"{stage.seconds:.2f} s" if stage.status != "running" else "", stage.detail)
        live.update(render())

    return live, listener


def _summary_table(location: Path):
    from rich.table import Table

    from tasks.artifacts import human_size
    from tasks.manifest import MANIFEST_NAME, Manifest

    manifest = Manifest.read(location / MANIFEST_NAME)
    table = Table(title=f"bundle {manifest.bundle_id}")
    for col in ("asset", "size", "details", "licence"):
        table.add_column(col)
    for a in manifest.assets:
        licences = ", ".join(dict.fromkeys(lic.licence for lic in a.licences)) or "-"
        table.add_row(a.name, human_size(a.bytes), a.details(), licences)
    return table, manifest


def check_targets(out: Path | None, storage: str | None, brief=None) -> tuple[str | None, Path]:
    """The storage target and the local output folder, checked before Prefect or any model loads:
    a storage URL that cannot be, an output folder that cannot be written, an unusable model cache,
    GENBUNDLE_DEVICE=cuda without a GPU. Returns (storage target, output folder)."""
    from tasks.files import check_writable_folder
    from tasks.models import check_device, check_model_cache
    from tasks.s3 import StorageError
    from tasks.storage import out_root, storage_target

    try:
        target = storage_target(storage)
        root = out_root(out, target)
    except StorageError as err:  # only what was typed is parsed here: an input error, not an unreachable store
        raise InputError(str(err)) from None
    if out is not None:
        name = "--out"
    elif target is not None and not target.startswith("s3://"):
        name = "--storage" if storage is not None else "GENBUNDLE_STORAGE"
    else:
        name = "GENBUNDLE_OUT"
    check_writable_folder(root, name, "give a folder you can write to")
    if brief is None or brief.models == "tiny":  # the tiny profile builds its models there
        check_model_cache()
    check_device()
    return target, root


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    # Before anything imports Prefect (the checks below do): it reads its logging settings once.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the progress display tells the story
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network to send it to
    brief = brief_from_args(args)  # a BriefError ends here, before Prefect or any model loads
    storage, root = check_targets(args.out, args.storage, brief)  # so does an unusable --out or setting
    from flows.local_prefect import errors_to_file, local_prefect

    with local_prefect() as server:  # a temporary server starts first: it boots while the rest loads
        from flows.bundle import asset_bundle, load_models, preflight, runtime_label
        from tasks import progress
        from tasks.engines import ROLES
        from tasks.errors import UserError
        from tasks.jobs import bundle_id, resolve_jobs
        from tasks.s3 import is_s3_url
        from tasks.space import disk_full, estimate_bundle_bytes

        local = root / bundle_id(brief, runtime_label(False))
        preflight(brief, storage, out=root)  # models there, title fits, bucket reachable, room on disk
        log_file = run_log_file(root, local.name)
        # Load the models while the server starts; the flow's tasks find them loaded. A load that
        # fails here fails again in its task, which reports it.
        threading.Thread(target=_quietly, args=(load_models, brief), daemon=True).start()
        stages = ["prompts", *ROLES, *FINISHING_STAGES, *(["upload"] if is_s3_url(storage) else [])]
        live, listener = _progress_display(console, stages, log_file)
        progress.add_listener(listener)
        try:
            with live, errors_to_file(log_file):
                if server:
                    server.wait_ready()
                location = asset_bundle(brief, out=str(args.out) if args.out else None, storage=storage)
        except Exception as err:  # the run failed: one line; the tracebacks are in the log file
            err = disk_full(err, root, estimate_bundle_bytes(resolve_jobs(brief))) or err
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            details = f" (details: {log_file})" if log_file.exists() else ""
            console.print(f"[red]run failed:[/] {_one_line(reason)}{details}", highlight=False, soft_wrap=True)
            return 1
        finally:
            progress.remove_listener(listener)

    from tasks.artifacts import licence_line

    table, manifest = _summary_table(local)
    console.print()
    console.print(table)
    console.print(licence_line(manifest), highlight=False, soft_wrap=True)
    if manifest.placeholder:
        console.print(f"[yellow]note:[/] {manifest.placeholder}", highlight=False)
    if is_s3_url(location):
        _print_links(console, location, [a.name for a in manifest.assets] + ["bundle.json"])
    print(location)
    return 0


def run_log_file(root: Path, name: str) -> Path:
    """Where a command-line run's errors, with their tracebacks, are written (see errors_to_file)."""
    from tasks.workspace import WORK_DIR

    folder = root / WORK_DIR / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.log"


def _print_links(console, url: str, names: list[str]) -> None:
    from tasks.page import SHARE_NAME
    from tasks.s3 import parse_s3_url, presigned_links, s3_client
    from tasks.settings import get_settings

    expiry = get_settings().presign_expiry
    links = presigned_links(s3_client(), parse_s3_url(url), [*names, SHARE_NAME], expiry)
    share = links.pop(SHARE_NAME)
    console.print(f"shareable links (presigned, valid {expiry // 60} min):")
    for name, link in links.items():
        print(f"{name}\t{link}")
    console.print("the bundle's page, every link on it presigned (the link to share):")
    print(f"{SHARE_NAME}\t{share}")


def _quietly(function, *args) -> None:
    """Run a head start (see cmd_run); its failure is reported where the work itself fails."""
    try:
        function(*args)
    except Exception as err:  # noqa: BLE001
        logging.getLogger(__name__).debug("head start failed: %r", err)


def cmd_verify(args: argparse.Namespace) -> int:
    from tasks.manifest import ManifestError
    from tasks.verify import verify_bundle

    try:
        result = verify_bundle(args.target, args.trust)
    except ManifestError as err:  # a bundle.json that is no manifest: the file named is wrong, exit 2
        raise InputError(f"verify: {err}") from None
    if result.signing:
        print(result.signing)
    for a in result.assets:
        detail = "" if a.status == "ok" else f" (expected {a.expected_sha256[:12]}, {a.expected_bytes} bytes"
        if a.status == "mismatch":
            detail += f"; found {a.found_sha256[:12]}, {a.found_bytes} bytes)"
        elif a.status == "missing":
            detail += ")"
        print(f"{a.status:8} {a.name}{detail}")
        if a.credentials:
            print(f"{'':8} {a.credentials.describe()}")
    print(f"{'verified' if result.ok else 'FAILED'}: {args.target}")
    return 0 if result.ok else 1


def cmd_ls(args: argparse.Namespace) -> int:
    from tasks.s3 import list_bundles, parse_s3_url

    for b in list_bundles(parse_s3_url(args.target)):
        title = b.title if b.title is not None else "(incomplete: no manifest)"
        print(f"{b.created or '-':25} {b.assets:3} assets {b.bytes:>12} bytes  {title}  {b.url}")
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from tasks.gallery import local_gallery, s3_gallery
    from tasks.s3 import is_s3_url

    if is_s3_url(args.target):
        link, expiry = s3_gallery(args.target, args.out)
        print(f"gallery uploaded beside the bundles; presigned link, valid {expiry // 60} min:", file=sys.stderr)
        if args.out:
            print(f"a copy: {args.out}", file=sys.stderr)
        print(link)
    else:
        print(local_gallery(Path(args.target), args.out))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from tasks.s3 import parse_s3_url, upload_bundle_dir

    report = upload_bundle_dir(Path(args.bundle), parse_s3_url(args.target))
    print(f"{report.url}: {report.summary()} in {report.seconds:.2f} s")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before the checks import Prefect (see cmd_run)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from tasks.brief import load_briefs_file

    entries = load_briefs_file(args.briefs)  # a missing, binary or non-UTF-8 file ends here; bad rows are reported
    _, root = check_targets(args.out, args.storage)
    # Before Prefect and the models load (tens of seconds on a cold machine): say that it started.
    print(f"batch: {len(entries)} briefs from {args.briefs}, up to {args.max_concurrency} at a time; "
          "starting Prefect and loading the models", file=sys.stderr, flush=True)  # fmt: skip
    from flows.batch import asset_bundle_batch, batch_report
    from flows.local_prefect import errors_to_file, local_prefect
    from tasks import progress

    out = str(args.out) if args.out else None
    listener = _batch_progress(len(entries))
    progress.add_listener(listener)
    log_file = run_log_file(root, f"batch-{args.briefs.stem}")
    try:
        with local_prefect() as server, errors_to_file(log_file):
            if server:
                server.wait_ready()
            state = asset_bundle_batch(
                str(args.briefs), out=out, storage=args.storage, max_concurrency=args.max_concurrency,
                dispatch=args.dispatch, return_state=True,
            )  # fmt: skip
    finally:
        progress.remove_listener(listener)
    if log_file.exists():
        print(f"the failures' details: {log_file}", file=sys.stderr)
    report = batch_report(state)
    if report is None:  # the batch itself could not start (e.g. no such file)
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    for row in report:
        print(f"{row['status']:8} {row['brief']}  {row['detail']}")
    print(state.message)
    return 0 if state.is_completed() else 1


def _batch_progress(total: int):
    """One line per brief as it starts and ends (the batch flow reports each as a stage "brief <label>")."""
    finished = 0
    lock = threading.Lock()

    def listener(stage) -> None:
        nonlocal finished
        if not stage.name.startswith(BRIEF_STAGE):
            return  # the bundles' own stages: too many to follow in a batch
        label = stage.name.removeprefix(BRIEF_STAGE)
        with lock:
            if stage.status == "running":
                line = f"started  {label}"
            else:
                finished += 1
                line = f"{stage.status:8} {label} ({stage.seconds:.1f} s) [{finished}/{total}]"
            print(line, file=sys.stderr, flush=True)

    return listener


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.operate import deploy

    deploy(args.pool_type, args.gpu_slots)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    brief = parse_brief(load_brief_file(Path(args.brief)))
    from flows.operate import BRIEF_EVENT, submit

    print(f"{BRIEF_EVENT} {submit(brief)}: {brief.title}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import anyio

    from flows.operate import CPU_POOL, GPU_POOLS
    from flows.warm_worker import serve

    if args.pool not in (CPU_POOL, *GPU_POOLS):
        raise InputError(
            f"--pool {args.pool}: not a genbundle work pool; give one of {', '.join(GPU_POOLS)}, {CPU_POOL}"
        )
    if args.name is not None and (not args.name.strip() or "/" in args.name or "%" in args.name):
        raise InputError(f"--name {args.name!r}: give a name without '/' or '%', or leave it out")
    anyio.run(serve, args.pool, args.slots, args.name, args.with_healthcheck)
    return 0


def grid_path(args: argparse.Namespace, seed: int, root: Path) -> Path:
    """Where `grid` writes without --grid-out: under --out when given, else beside the brief file,
    else under the output folder (GENBUNDLE_OUT); never the current folder by surprise."""
    name = f"scheduler-grid-seed{seed}.png"
    if args.out is None and args.brief:
        return Path(args.brief).parent / name
    return root / name


def cmd_grid(args: argparse.Namespace) -> int:
    brief = brief_from_args(args)
    from flows.bundle import preflight
    from tasks.grid import scheduler_grid
    from tasks.workspace import Workspace

    _, root = check_targets(args.out, None, brief)
    path = args.grid_out or grid_path(args, brief.seed, root)
    if path.is_dir():
        raise InputError(f"--grid-out: {path} is a folder: give the .png file to write")
    from tasks.files import check_writable_folder

    check_writable_folder(path.parent, "--grid-out" if args.grid_out else "the grid's folder (--grid-out)")
    preflight(brief)
    seconds = scheduler_grid(brief, Workspace.for_storage(str(args.out) if args.out else None, None), path)
    print("  ".join(f"{name} {s:.2f} s" for name, s in seconds.items()))
    print(path)
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from tasks.engines import ROLES, default_engine, engine
    from tasks.models import pull_models

    names = args.engine or [default_engine(role).name for role in ROLES]
    for name in names:
        try:
            engine(name)  # an unknown name ends here, naming the registered ones
        except ValueError as err:
            raise InputError(f"--engine: {err}") from None
    if args.models == "tiny":  # built into GENBUNDLE_MODEL_CACHE: refuse one that cannot be written, now
        from tasks.models import check_model_cache

        check_model_cache()
    try:
        pull_models(args.models, names)
    except Exception as err:  # network or hub errors: one line
        print(f"error: could not fetch models: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    import json

    from tasks.engines import ROLES, all_engines

    rows = sorted(
        (e.describe() for e in all_engines().values()), key=lambda d: (list(ROLES).index(d["role"]), d["name"])
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("role", "engine", "pipeline", "default weights", "licence", "commercial", "tiny", "steps", "size")
    lines = [header]
    for d in rows:
        size = d["default_size"] or (f"{d['duration']:g} s" if "duration" in d else "")
        if "frames" in d:
            size += f", {d['frames']} frames at {d['fps']} fps"
        lines.append((
            d["role"], d["name"], d["pipeline_class"], d["weights"], d["licence"],
            "yes" if d["commercial_use"] else "no", "yes" if d["tiny_build"] else "no", str(d["default_steps"]), size,
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:  # plain columns: readable in a terminal and in a pipe alike
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _path(value: str) -> Path:
    """An output flag's path: empty would silently mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty, which would mean the current folder: give a path")
    return Path(value)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {number})")
    return number


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _brief_arguments(parser: argparse.ArgumentParser) -> None:
    """The brief, as a file and/or flags (flags win)."""
    parser.add_argument("brief", nargs="?", help="brief file (.yaml, .yml or .json)")
    parser.add_argument("--title")
    parser.add_argument("--author")
    parser.add_argument("--tagline")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--models", choices=["tiny", "full"], help="model profile (default: tiny)")
    parser.add_argument("--cover-prompt")
    parser.add_argument("--sound-prompt")
    parser.add_argument("--video-prompt")
    parser.add_argument("--duration", type=float, help="seconds of engine sound")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any brief field, e.g. cover.steps=30")
    parser.add_argument("--out", type=_path, help="folder to store bundles in (default ./bundles or GENBUNDLE_OUT)")
    _allow_large_argument(parser)


def _allow_large_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run jobs over their engine's comfortable sizes, frames, steps or seconds (GENBUNDLE_ALLOW_LARGE=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genbundle", description="Turn a creative brief into an asset bundle.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate a bundle from a brief file and/or flags")
    _brief_arguments(run)
    run.add_argument("--storage", help="also upload to s3://bucket/prefix (default GENBUNDLE_STORAGE)")
    run.set_defaults(func=cmd_run)

    grid = sub.add_parser("grid", help="the cover under every scheduler, same seed, side by side")
    _brief_arguments(grid)
    grid.add_argument(
        "--grid-out",
        type=_path,
        help="the PNG to write (default scheduler-grid-seed<N>.png under --out, "
        "else beside the brief file, else under GENBUNDLE_OUT)",
    )
    grid.set_defaults(func=cmd_grid)

    batch = sub.add_parser("batch", help="one bundle per brief in a JSON Lines or CSV file")
    batch.add_argument("briefs", type=Path)
    batch.add_argument("--max-concurrency", type=_positive, default=2)
    batch.add_argument("--dispatch", action="store_true", help="generate on the GPU work pools (needs workers)")
    batch.add_argument("--out", type=_path)
    batch.add_argument("--storage")
    _allow_large_argument(batch)
    batch.set_defaults(func=cmd_batch)

    deploy = sub.add_parser("deploy", help="create the work pools and the deployments on the server")
    deploy.add_argument("--pool-type", choices=["process", "docker", "kubernetes"], default="process")
    deploy.add_argument(
        "--gpu-slots", type=_positive,
        help="cap each GPU pool at N flow runs at once across all its workers (applied to existing pools"
        " too; without it, none is set and existing caps are kept). Per GPU: genbundle worker --slots N",
    )  # fmt: skip
    deploy.set_defaults(func=cmd_deploy)

    submit = sub.add_parser("submit", help="submit a brief to the server: the on-brief deployment makes it")
    submit.add_argument("brief", help="brief file (.yaml, .yml or .json)")
    submit.set_defaults(func=cmd_submit)

    worker = sub.add_parser(
        "worker", help="run a pool's flow runs in this process, models kept loaded between them (one per GPU)"
    )
    worker.add_argument("--pool", required=True, help="the work pool to take runs from, e.g. gpu-image")
    worker.add_argument("--slots", type=_positive, default=1, help="runs at once: the GPU's slots (default 1)")
    worker.add_argument("--name", help="the worker's name on the server (default: a generated one)")
    worker.add_argument(
        "--with-healthcheck", action="store_true",
        help="serve GET /health (Prefect's worker health server, on PREFECT_WORKER_WEBSERVER_HOST:PORT,"
        " default 0.0.0.0:8080): 200 while the worker polls its pool, 503 once it stops",
    )  # fmt: skip
    worker.set_defaults(func=cmd_worker)

    verify = sub.add_parser("verify", help="re-hash a stored bundle against its manifest, check its C2PA credentials")
    verify.add_argument("target", help="a bundle folder, or s3://bucket/prefix/<bundle-id>")
    verify.add_argument("--trust", help="PEM roots to trust as C2PA signers' anchors (default GENBUNDLE_C2PA_TRUST)")
    verify.set_defaults(func=cmd_verify)

    ls = sub.add_parser("ls", help="list the bundles under an s3:// prefix")
    ls.add_argument("target", help="s3://bucket/prefix")
    ls.set_defaults(func=cmd_ls)

    gallery = sub.add_parser("gallery", help="one page of many bundles: a local folder, or s3:// (presigned links)")
    gallery.add_argument("target", help="a folder of bundles, or s3://bucket/prefix")
    gallery.add_argument(
        "--out", type=Path, help="the page to write (default: gallery.html in the folder; for s3:// a local copy)"
    )
    gallery.set_defaults(func=cmd_gallery)

    upload = sub.add_parser("upload", help="upload a stored local bundle (e.g. after a failed upload)")
    upload.add_argument("bundle", help="the local bundle folder")
    upload.add_argument("target", help="s3://bucket/prefix")
    upload.set_defaults(func=cmd_upload)

    models = sub.add_parser("models", help="model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="build the tiny models or download the full ones into the cache")
    pull.add_argument("--models", choices=["tiny", "full"], default="full")
    pull.add_argument(
        "--engine", action="append", help="an engine to fetch (repeatable; default: each role's default engine)"
    )
    pull.set_defaults(func=cmd_models_pull)

    engines = sub.add_parser("engines", help="list the registered engines: role, weights, licence, defaults")
    engines.add_argument("--json", action="store_true", help="print them as a JSON list")
    engines.set_defaults(func=cmd_engines)
    return parser


def _one_line(err: Exception | str) -> str:
    """An error's message on one line (a library's message may hold several)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _interrupt(signum, frame) -> None:
    """Ctrl-C and SIGTERM (a scheduler, `docker stop`, `kill`) end a run alike: one line, and the
    temporary server stopped after the logs are flushed (see flows/exit_watch.py when that is slow)."""
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # a usage error (one line, exit 2) or --help (exit 0)
        return done.code if isinstance(done.code, int) else 2
    from tasks.errors import UserError

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if getattr(args, "allow_large", False):  # before the settings are read: the flag is the setting
            from tasks.settings import allow_large_jobs

            allow_large_jobs()
        if args.command != "engines":  # every other command reads settings: a bad one ends here, exit 2
            from tasks.settings import get_settings

            get_settings()
        return args.func(args)
    except InputError as err:  # exit 2: the brief, a flag, a setting or a file named needs fixing
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except UserError as err:  # exit 1: a model, the storage or the server needs fixing
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the finished steps are kept for a re-run
        signum = stop.args[0] if stop.args and isinstance(stop.args[0], int) else signal.SIGINT
        print(interrupted_line(signum), file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        # Exempt what is loaded from the garbage collection at interpreter exit: with torch,
        # diffusers and Prefect imported, that collection alone took 2.7 s (0.35 s frozen).
        gc.freeze()


def entry() -> None:
    """The `genbundle` command. A failed or interrupted run exits at once: generations still
    running in the flow's worker threads cannot be interrupted, and a normal exit waits for them."""
    EXIT_WATCH.enable()
    code = main()
    if code in (1, 130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
