"""What the Prefect UI shows for a bundle run: a markdown summary with a table of the assets."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.manifest import Manifest, cover_alt_text
from tasks.s3 import UploadReport

TRACE_PICTURES = {
    "trace_forward.png": "forward process",
    "trace_reverse.png": "reverse process",
    "noise_schedule.png": "noise schedule",
}
PICTURES = {"cover_titled.png": "titled cover", **TRACE_PICTURES}  # embedded in the summary when uploaded


def human_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def licence_line(manifest: Manifest) -> str:
    """Each engine's licence, and whether the bundle as a whole may be used commercially."""

    def terms(run) -> str:
        if not run.commercial_use:
            return "non-commercial only"
        return (
            f"commercial use allowed, {run.licence_conditions}" if run.licence_conditions else "commercial use allowed"
        )

    engines = "; ".join(f"{run.title} ({role}): {run.licence}, {terms(run)}" for role, run in manifest.engines.items())
    verdict = "may be used commercially" if manifest.commercial_use else "may NOT be used commercially as a whole"
    return f"Licences: {engines}. The bundle {verdict}."


def summary_markdown(manifest: Manifest, location: str, upload: UploadReport | None = None) -> str:
    lines = [f"# Bundle `{manifest.bundle_id}`", ""]
    if manifest.placeholder:
        lines += [f"> **Note:** {manifest.placeholder}", ""]
    brief = manifest.brief
    lines += [
        f"**{brief['title']}** by {brief['author']}, seed {brief['seed']}, profile `{brief['models']}`",
        "",
        f"Stored at `{upload.url if upload else location}`",
        "",
    ]
    names = {a.name for a in manifest.assets}
    if upload:
        for name, alt in PICTURES.items():
            if name in upload.links:
                lines += [f"![{brief['title']}, {alt}]({upload.links[name]})", ""]
        lines += [
            f"Links below are presigned and expire after {upload.expires_in // 60} minutes. {upload.summary()}.",
            "",
        ]
    elif traced := [name for name in TRACE_PICTURES if name in names]:
        # An image artifact needs a URL the UI can fetch; a local file is not one, so say where they are.
        lines += ["Diffusion trace pictures (local files): " + ", ".join(f"`{Path(location) / n}`" for n in traced), ""]
    caption = manifest.post_processing.get("cover_caption")
    if caption:
        verdict = (
            "**flagged: it shares no content word with the prompt**"
            if caption["flagged"]
            else f"shares with the prompt: {', '.join(caption['shared_words'])}"
        )
        alt = cover_alt_text(caption["text"], str(brief.get("models", "")))
        lines += [f"Cover alt text (BLIP caption): _{alt}_ ({verdict})", ""]
    lines += [licence_line(manifest), ""]
    lines += ["| asset | role | size | details | sha256 |", "|---|---|---|---|---|"]
    for a in manifest.assets:
        name = f"[{a.name}]({upload.links[a.name]})" if upload else a.name
        lines.append(f"| {name} | {a.role} | {human_size(a.bytes)} | {a.details()} | `{a.sha256[:12]}` |")
    reused = sorted(role for role, how in manifest.steps.items() if how == "reused")
    lines += ["", f"This run made {len(manifest.steps) - len(reused)} of {len(manifest.steps)} assets' steps"]
    if reused:
        lines[-1] += f"; found finished by an earlier run: {', '.join(reused)}"
    lines += ["", "| stage (this run) | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in manifest.timings_seconds.items()]
    lines += [
        "",
        "| role | engine | pipeline | licence | scheduler | steps | guidance | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role, e in manifest.engines.items():
        lines.append(
            f"| {role} | {e.name} | {e.pipeline_class} | {e.licence} | {e.scheduler} | {e.steps} | {e.guidance} "
            f"| {e.device} {e.dtype} |"
        )
    compute = manifest.compute
    if compute:
        entries = [*compute["per_asset"].values(), *compute.get("per_step", {}).values()]
        sources = sorted({f"{e.get('device', 'unknown')}: {e['source']}" for e in entries})
        lines += [
            "",
            f"**Compute:** {sum(e['seconds'] for e in entries):.1f} s, "
            f"{compute['total_wh'] * 1000:.2f} mWh in all, {compute['this_run_wh'] * 1000:.2f} mWh this run "
            f"({'; '.join(sources)}). {compute.get('note', '')}".rstrip(),
        ]
    lines += ["", f"_{manifest.disclosure}_"]
    return "\n".join(lines)


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(manifest: Manifest, location: str, upload: UploadReport | None = None) -> str:
    """Publish the bundle's summary as a markdown artifact keyed by bundle id; returns its markdown.

    From this run's manifest, not the stored one: a bundle already stored is kept as it was (same
    brief, same files), and its manifest holds the earlier run's timings and steps."""
    markdown = summary_markdown(manifest, location, upload)
    create_markdown_artifact(key=f"bundle-{manifest.bundle_id}"[:100], markdown=markdown, description="Asset bundle")
    return markdown
