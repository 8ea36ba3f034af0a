"""Video: the car clip (Zeroscope v2 576w or its tiny twin), its encoding, the sound mux, the poster.

Frames are encoded once to H.264 yuv420p with faststart (`car.mp4`, silent). The normalised
engine sound is then muxed on as AAC with the video stream copied (`car_with_sound.mp4`):
the sound is fitted to the video's length, trimmed with a short fade-out when longer, looped
when shorter, so both streams end together without a click.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from prefect import task

from tasks.disclosure import Disclosure, ffmpeg_metadata, png_info
from tasks.generation import Generated, Job, disclosure_for, generation_step, run_generation
from tasks.media import MediaError, probe, run_ffmpeg
from tasks.progress import tracked
from tasks.storage import atomic_path
from tasks.workspace import StepResult, Workspace

VIDEO_NAME = "car.mp4"
MUXED_NAME = "car_with_sound.mp4"
POSTER_NAME = "poster.png"
FADE_OUT_S = 0.1  # long enough to avoid a click, short enough not to be heard as a fade


def encode_h264(frames: np.ndarray, fps: int, path: Path, disclosure: Disclosure | None = None) -> None:
    """Encode RGB frames (F, H, W, 3; floats in 0..1 or uint8) as H.264 yuv420p MP4 with faststart."""
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    _, height, width, _ = frames.shape
    source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
    h264 = ["-c:v", "libx264", "-preset", "medium", "-crf", "17", "-pix_fmt", "yuv420p"]
    with atomic_path(path) as tmp:
        run_ffmpeg(
            [*source, *h264, *_metadata(disclosure), "-movflags", "+faststart", "-an", "-f", "mp4", str(tmp)],
            input=np.ascontiguousarray(frames).tobytes(),
        )


def _metadata(disclosure: Disclosure | None) -> list[str]:
    return ffmpeg_metadata(disclosure) if disclosure is not None else []


@task(name="diffuse-video", tags=["gpu"])  # not "generate-video": that is the flow
def generate_video(job: Job, workspace: Workspace) -> Generated:
    """Generate the clip and encode it as a silent H.264 MP4 in the work area (or find it there)."""
    step = generation_step(job, workspace, "video", __name__)
    with tracked("video") as stage:
        if done := step.load(Generated):
            stage.detail = "reused"
            return done

        def call(pipe, generator, on_step):
            return pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                width=job.width,
                height=job.height,
                num_frames=job.frames,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance,
                generator=generator,
                output_type="np",
                callback=lambda i, t, latents: on_step(i),
                callback_steps=1,
            ).frames[0]

        frames, engine, load_s, gen_s = run_generation(job, call)
        disclosure = disclosure_for(job, engine, "Car video")
        path = step.file(VIDEO_NAME)
        encode_h264(np.asarray(frames), job.fps, path, disclosure)
    made = Generated(path=str(path), engine=engine, load_seconds=load_s, generate_seconds=gen_s, disclosure=disclosure)
    return step.save(made)


class Muxed(StepResult):
    audio_fit: str  # how the sound was fitted to the video, in words
    seconds: float = 0.0


def video_duration(path: Path) -> float:
    (video,) = [s for s in probe(path) if s.kind == "video"]
    if video.frames and video.fps:
        return video.frames / video.fps
    return video.duration


@task(name="mux-sound-onto-video")
def mux_sound_onto_video(video: StepResult, sound: StepResult, workspace: Workspace) -> Muxed:
    """Put the engine sound on the clip as AAC, fitted to the clip's length, video stream copied."""
    import soundfile as sf

    step = workspace.step("mux", {"video": video.key, "sound": sound.key}, sys.modules[__name__])
    with tracked("mux") as stage:
        if done := step.load(Muxed):
            stage.detail = "reused"
            return done
        duration = video_duration(Path(video.path))
        sound_seconds = sf.info(sound.path).duration
        fade = min(FADE_OUT_S, duration / 4)
        how, loop = ("trimmed", []) if sound_seconds >= duration else ("looped", ["-stream_loop", "-1"])
        fit = f"sound {how} from {sound_seconds:.2f} s to the video's {duration:.2f} s, {fade * 1000:.0f} ms fade-out"
        fitted = f"atrim=0:{duration:.6f},afade=t=out:st={duration - fade:.6f}:d={fade:.6f}"
        out = step.file(MUXED_NAME)
        with atomic_path(out) as tmp:
            run_ffmpeg(
                ["-i", video.path, *loop, "-i", sound.path, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
                + ["-af", fitted, "-c:a", "aac", "-b:a", "192k", "-ar", "48000", "-t", f"{duration:.6f}"]
                + [*_metadata(video.disclosure), "-movflags", "+faststart", "-f", "mp4", str(tmp)]
            )
    return step.save(Muxed(path=str(out), audio_fit=fit, seconds=stage.seconds, disclosure=video.disclosure))


class Poster(StepResult):
    seconds: float = 0.0  # ffmpeg's work on the CPU


@task(name="make-poster")
def make_poster(video: StepResult, workspace: Workspace) -> Poster:
    """A poster frame: ffmpeg's thumbnail filter picks the most representative frame."""
    step = workspace.step("poster", {"video": video.key}, sys.modules[__name__])
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
