"""Disclosure embedded in every asset, read back with common tools (Pillow, PyAV, soundfile, ffmpeg)."""

import av
import soundfile as sf
from PIL import Image

from tasks.disclosure import AI_GENERATED, IPTC_TRAINED_ALGORITHMIC_MEDIA
from tasks.media import run_ffmpeg


def test_png_assets_carry_text_chunks_and_xmp(tiny_bundle):
    for name in ("cover.png", "cover_titled.png", "poster.png"):
        with Image.open(tiny_bundle / name) as im:
            text = im.text
        assert text["genbundle:ai_generated"] == "true" and text["Comment"] == AI_GENERATED, name
        assert text["Software"].startswith("genbundle ")
        assert IPTC_TRAINED_ALGORITHMIC_MEDIA in text["XML:com.adobe.xmp"]
        assert text["genbundle:seed"] == "0"
        assert text["genbundle:model"] == "tiny random weights (built offline)"
    with Image.open(tiny_bundle / "cover_titled.png") as im:
        assert im.text["Title"] == "The Forest of Glowing Things by A. N. Author"
        assert im.text["genbundle:prompt"].startswith("A mystical forest")


def test_mp4_metadata(tiny_bundle):
    for name in ("car.mp4", "car_with_sound.mp4"):
        with av.open(str(tiny_bundle / name)) as container:
            tags = container.metadata
        assert tags["comment"] == AI_GENERATED and tags["title"] == "Car video", name
        assert tags["description"].startswith("A car driving on a winding mountain road")
    log = run_ffmpeg(["-i", str(tiny_bundle / "car_with_sound.mp4"), "-f", "null", "-"])
    assert f"comment         : {AI_GENERATED}" in log  # what ffprobe-like tools show


def test_wav_info_chunk(tiny_bundle):
    for name in ("engine_raw.wav", "engine.wav"):
        with sf.SoundFile(tiny_bundle / name) as f:
            assert f.title == "Engine sound" and f.comment.startswith(AI_GENERATED), name
            assert "Prompt: Car sound, realistic engine" in f.comment and f.software.startswith("genbundle ")
