import numpy as np
from PIL import Image

from tasks.brief import parse_brief
from tasks.engines import default_engine
from tasks.grid import scheduler_grid

SCHEDULERS = default_engine("cover").schedulers


def test_grid_shows_every_scheduler_from_the_same_seed(workspace, tmp_path):
    brief = parse_brief({"title": "Grid", "author": "A", "cover": {"width": 64, "height": 96}})
    seconds = scheduler_grid(brief, workspace, tmp_path / "grid.png")
    assert list(seconds) == list(SCHEDULERS) and all(s > 0 for s in seconds.values())
    with Image.open(tmp_path / "grid.png") as im:
        sheet = np.asarray(im.convert("RGB"), dtype=float)
        assert im.text["genbundle:ai_generated"] == "true"
    label_h = sheet.shape[0] - 96
    assert sheet.shape[1] == 64 * len(SCHEDULERS) and label_h > 0
    tiles = [sheet[label_h:, i * 64 : (i + 1) * 64] for i in range(len(SCHEDULERS))]
    # Each scheduler gives its own image of the same seed (close ones at 4 steps, but never identical).
    assert min(np.abs(a - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1 :]) > 0.05
