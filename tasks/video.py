"""Video finishing: the sound muxed onto the generated clip, and its poster frame.

The generated clip (`car.mp4`, silent H.264, see tasks/h264.py) gets the normalised sound
muxed on as AAC, mono or stereo as the sound is, with the video stream copied (`car_with_sound.mp4`):
the sound is fitted to the video's length, trimmed with a short fade-out when longer, looped
when shorter, so both streams end together without a click.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import disclosure
from tasks.disclosure import ffmpeg_metadata, png_info
from tasks.files import atomic_path
from tasks.media import MediaError, probe, run_ffmpeg
from tasks.progress import tracked
from tasks.workspace import StepResult, Workspace

MUXED_NAME = "car_with_sound.mp4"
POSTER_NAME = "poster.png"
FADE_OUT_S = 0.1  # long enough to avoid a click, short enough not to be heard as a fade


class Muxed(StepResult):
    audio_fit: str  # how the sound was fitted to the video, in words
    seconds: float = 0.0


def video_duration(path: Path) -> float:
    (video,) = [s for s in probe(path) if s.kind == "video"]
    if video.frames and video.fps:
        return video.frames / video.fps
    return video.duration


@task(name="mux-sound-onto-video", cache_policy=NO_CACHE)
def mux_sound_onto_video(video: StepResult, sound: StepResult, workspace: Workspace) -> Muxed:
    """Put the engine sound on the clip as AAC, fitted to the clip's length, video stream copied."""
    import soundfile as sf

    inputs = {"video": video.key, "sound": sound.key}
    step = workspace.step("mux", inputs, mux_sound_onto_video.fn, video_duration, disclosure)
    with tracked("mux") as stage:
        if done := step.load(Muxed):
            stage.detail = "reused"
            return done
        duration = video_duration(Path(video.path))
        sound_info = sf.info(sound.path)
        sound_seconds = sound_info.duration
        fade = min(FADE_OUT_S, duration / 4)
        how, loop = ("trimmed", []) if sound_seconds >= duration else ("looped", ["-stream_loop", "-1"])
        fit = f"sound {how} from {sound_seconds:.2f} s to the video's {duration:.2f} s, {fade * 1000:.0f} ms fade-out"
        fitted = f"atrim=0:{duration:.6f},afade=t=out:st={duration - fade:.6f}:d={fade:.6f}"
        out = step.file(MUXED_NAME)
        with atomic_path(out) as tmp:
            run_ffmpeg(
                ["-i", video.path, *loop, "-i", sound.path, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
                + ["-af", fitted, "-c:a", "aac", "-b:a", "192k", "-ar", "48000", "-ac", str(sound_info.channels)]
                + ["-t", f"{duration:.6f}"]
                + [
                    *(ffmpeg_metadata(video.disclosure) if video.disclosure else []),
                    "-movflags",
                    "+faststart",
                    "-f",
                    "mp4",
                    str(tmp),
                ]
            )
    return step.save(Muxed(path=str(out), audio_fit=fit, seconds=stage.seconds, disclosure=video.disclosure))


class Poster(StepResult):
    seconds: float = 0.0  # ffmpeg's work on the CPU


@task(name="make-poster", cache_policy=NO_CACHE)
def make_poster(video: StepResult, workspace: Workspace) -> Poster:
    """A poster frame: ffmpeg's thumbnail filter picks the most representative frame."""
    step = workspace.step("poster", {"video": video.key}, make_poster.fn, disclosure)
    with tracked("poster") as stage:
        if done := step.load(Poster):
            stage.detail = "reused"
            return done
        out = step.file(POSTER_NAME)
        with atomic_path(out) as tmp:
            args = ["-i", video.path, "-vf", "thumbnail", "-frames:v", "1", "-update", "1", "-c:v", "png"]
            run_ffmpeg([*args, "-f", "image2", str(tmp)])
            if tmp.stat().st_size == 0:
                raise MediaError(f"ffmpeg wrote no poster frame for {video.path}")
            if video.disclosure is not None:  # ffmpeg writes no PNG text chunks: add them
                from PIL import Image

                with Image.open(tmp) as frame:
                    frame.load()
                    frame.save(tmp, format="PNG", pnginfo=png_info(video.disclosure))
    return step.save(Poster(path=str(out), seconds=stage.seconds, disclosure=video.disclosure))
