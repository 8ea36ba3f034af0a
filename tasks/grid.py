"""The scheduler grid: the same cover, same seed, under every scheduler, side by side."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tasks.brief import Brief
from tasks.disclosure import png_info
from tasks.engines import engine
from tasks.files import atomic_path
from tasks.generation import generate
from tasks.jobs import resolve_job
from tasks.prompts import expand_prompts
from tasks.workspace import Workspace


def scheduler_grid(brief: Brief, workspace: Workspace, path: Path) -> dict[str, float]:
    """Render the brief's cover under each scheduler its engine accepts into one labelled PNG;
    returns seconds per scheduler."""
    prompts = expand_prompts.fn(brief)
    cover = resolve_job(brief, "cover", prompts["cover"])
    tiles, seconds = [], {}
    for name in engine(cover.engine).schedulers:
        job = cover.model_copy(update={"scheduler": name})
        made = generate.fn(job, workspace)
        seconds[name] = made.generate_seconds
        with Image.open(made.path) as im:
            tiles.append((name, im.convert("RGB")))
    width, height = tiles[0][1].size
    label_h = max(14, height // 10)
    sheet = Image.new("RGB", (width * len(tiles), height + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=int(label_h * 0.7))
    for i, (name, tile) in enumerate(tiles):
        sheet.paste(tile, (i * width, label_h))
        label = f"{name} · {job.steps} steps"
        x = i * width + (width - draw.textlength(label, font=font)) / 2
        draw.text((x, label_h * 0.12), label, font=font, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", pnginfo=png_info(made.disclosure.model_copy(update={"title": "Scheduler grid"})))
    return seconds
