"""Cover generation: the untitled book-cover image, Stable Diffusion v1.5 (or its tiny twin)."""

from __future__ import annotations

from prefect import task

from tasks.disclosure import png_info
from tasks.generation import Generated, Job, disclosure_for, generation_step, run_generation
from tasks.progress import tracked
from tasks.storage import atomic_path
from tasks.trace import ReverseTrace
from tasks.workspace import Workspace

COVER_NAME = "cover.png"
REVERSE_TRACE_NAME = "reverse_trace.pt"  # latents at a few denoising steps, for the diffusion trace


@task(name="diffuse-cover", tags=["gpu"])  # not "generate-cover": that is the flow
def generate_cover(job: Job, workspace: Workspace) -> Generated:
    """Generate the cover art as PNG in the work area (or find it there, made before)."""
    step = generation_step(job, workspace, "cover", __name__)
    with tracked("cover") as stage:
        if done := step.load(Generated):
            stage.detail = "reused"
            return done

        snapshots = ReverseTrace()

        def call(pipe, generator, on_step):
            def on_step_end(pipe, i, t, tensors):
                on_step(i)
                snapshots.keep(i, t, tensors["latents"], pipe.num_timesteps)  # PNDM runs more than job.steps
                return tensors

            return pipe(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                width=job.width,
                height=job.height,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance,
                generator=generator,
                output_type="pil",
                callback_on_step_end=on_step_end,
            ).images[0]

        image, engine, load_s, gen_s = run_generation(job, call)
        disclosure = disclosure_for(job, engine, "Book cover art")
        path = step.file(COVER_NAME)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=png_info(disclosure))
        snapshots.save(step.file(REVERSE_TRACE_NAME))
    made = Generated(path=str(path), engine=engine, load_seconds=load_s, generate_seconds=gen_s, disclosure=disclosure)
    return step.save(made)
