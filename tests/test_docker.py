"""The container files, checked without a Docker engine: hadolint, `docker compose config`, templates."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: it comes with the test extras (pip install -e '.[test]')")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack_is_valid_and_complete():
    cmd = [_tool("docker-compose"), "-f", str(REPO / "docker" / "compose.yaml"), "config", "--format", "json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"postgres", "prefect-server", "minio", "deploy", "worker-cpu"} <= set(services)
    for pool in ("gpu-image", "gpu-audio", "gpu-video"):
        worker = services[f"worker-{pool}"]
        assert worker["command"] == [pool]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql")


def test_gpu_pool_templates_request_a_gpu():
    kube = json.loads((REPO / "deployments" / "pools" / "kubernetes-gpu.json").read_text())
    container = kube["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert kube["variables"]["properties"]["gpu_count"]["default"] == 1
    docker = json.loads((REPO / "deployments" / "pools" / "docker-gpu.json").read_text())
    assert docker["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    (request,) = docker["variables"]["properties"]["container_create_kwargs"]["default"]["device_requests"]
    assert request["capabilities"] == [["gpu"]]
