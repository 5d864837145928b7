"""infra/k8s's work pool templates against a real Prefect server and the Kubernetes worker's own code.

A `prefect server start` of this module's own (SQLite in a temporary PREFECT_HOME, a free port) takes
`prefect work-pool create gpu-k8s --type kubernetes --base-job-template infra/k8s/gpu-base-job-template.json`,
the command a team runs; `prefect work-pool inspect` shows the template stored as written. The worker's
job configuration class (prefect-kubernetes) then builds the Job a flow run would get from the stored
pool: one nvidia.com/gpu, the GPU node selector and toleration, the store's Secret as environment, the
galaxy-pipeline image; overrides of the variables reach the Job. Templates the server or the worker
would refuse (a variable the template does not declare, no `variables`, a manifest that is no Job) fail
here as well."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

pytest.importorskip(
    "prefect_kubernetes", reason="prefect-kubernetes is not installed (pip install -e '.[dev]' or '.[k8s]')"
)

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

REPO = Path(__file__).resolve().parents[2]
GPU_TEMPLATE = REPO / "infra" / "k8s" / "gpu-base-job-template.json"
CPU_TEMPLATE = REPO / "infra" / "k8s" / "cpu-base-job-template.json"
PREFECT = Path(sys.executable).with_name("prefect")
GPU_TOLERATION = {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            return
        if server.poll() is not None:
            pytest.fail(f"prefect server start exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"the Prefect server did not answer at {url} within {seconds:.0f} s:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.25)


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of CLI commands against a Prefect server of this module's own."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_health(env["PREFECT_API_URL"], server, log)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PREFECT), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def gpu_pool(prefect_env: dict[str, str]) -> dict[str, Any]:
    """The pool `gpu-k8s` created from the GPU template with the CLI, as `work-pool inspect` shows it."""
    created = prefect(
        prefect_env, "work-pool", "create", "gpu-k8s", "--type", "kubernetes", "--base-job-template", str(GPU_TEMPLATE)
    )
    assert created.returncode == 0, created.stdout + created.stderr
    inspected = prefect(prefect_env, "work-pool", "inspect", "gpu-k8s", "--output", "json")
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    return dict(json.loads(inspected.stdout))


def render_job(env: dict[str, str], pool: str, job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker makes for a flow run of a deployment with `job_variables`."""

    async def render() -> dict[str, Any]:
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            work_pool = await client.read_work_pool(pool)
            configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
                work_pool.base_job_template, job_variables, client=client
            )
        configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="galaxy-test-run"))
        return dict(configuration.job_manifest)

    return asyncio.run(render())


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"])


def test_the_gpu_pool_stores_the_template_as_written(gpu_pool: dict[str, Any]) -> None:
    assert gpu_pool["name"] == "gpu-k8s"
    assert gpu_pool["type"] == "kubernetes"
    stored = gpu_pool["base_job_template"]
    assert stored == json.loads(GPU_TEMPLATE.read_text())
    spec = pod_spec(stored["job_configuration"]["job_manifest"])
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["envFrom"] == [{"secretRef": {"name": "{{ store_secret_name }}"}}]
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert spec["nodeSelector"] == "{{ node_selector }}"
    variables = stored["variables"]["properties"]
    assert variables["gpu_count"]["default"] == 1
    assert variables["node_selector"]["default"] == {"nvidia.com/gpu.present": "true"}
    assert variables["store_secret_name"]["default"] == "galaxy-store"
    assert variables["image"]["default"] == "galaxy-pipeline:cuda"


def test_the_worker_makes_a_one_gpu_job_from_the_pool(prefect_env: dict[str, str], gpu_pool: dict[str, Any]) -> None:
    job = render_job(prefect_env, gpu_pool["name"], {})
    assert job["kind"] == "Job"
    assert job["metadata"]["namespace"] == "galaxy"
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    spec = pod_spec(job)
    [container] = spec["containers"]
    assert container["image"] == "galaxy-pipeline:cuda"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}  # unset CPU/memory limits are left out
    assert container["envFrom"] == [{"secretRef": {"name": "galaxy-store"}}]
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": job["metadata"]["labels"]["prefect.io/flow-run-id"]} in (
        container["env"]
    )
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [GPU_TOLERATION]
    [shm] = spec["volumes"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert container["volumeMounts"] == [{"mountPath": "/dev/shm", "name": shm["name"]}]


def test_deployments_override_the_pools_variables(prefect_env: dict[str, str], gpu_pool: dict[str, Any]) -> None:
    overrides = {
        "gpu_count": 4,
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "store_secret_name": "survey-b-store",
        "image": "registry.example.com/galaxy/galaxy-pipeline:cuda",
        "memory_limit": "64Gi",
        "namespace": "survey-b",
    }
    job = render_job(prefect_env, gpu_pool["name"], overrides)
    spec = pod_spec(job)
    [container] = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4, "memory": "64Gi"}
    assert spec["nodeSelector"] == overrides["node_selector"]
    assert container["envFrom"] == [{"secretRef": {"name": "survey-b-store"}}]
    assert container["image"] == overrides["image"]
    assert job["metadata"]["namespace"] == "survey-b"
    assert spec["tolerations"] == [GPU_TOLERATION]


def strip_gpu(template: dict[str, Any]) -> dict[str, Any]:
    """The GPU template less what makes it one: the GPU limit, node selector, toleration and their variables."""
    template = copy.deepcopy(template)
    spec = pod_spec(template["job_configuration"]["job_manifest"])
    del spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del spec["nodeSelector"], spec["tolerations"]
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"] = spec
    for name in ("gpu_count", "node_selector"):
        del template["variables"]["properties"][name]
    return template


def test_the_cpu_template_is_the_gpu_one_without_the_gpu(prefect_env: dict[str, str]) -> None:
    gpu, cpu = json.loads(GPU_TEMPLATE.read_text()), json.loads(CPU_TEMPLATE.read_text())
    assert cpu["job_configuration"] == strip_gpu(gpu)["job_configuration"]
    assert set(cpu["variables"]["properties"]) == set(strip_gpu(gpu)["variables"]["properties"])
    response = httpx.post(
        f"{prefect_env['PREFECT_API_URL']}/work_pools/",
        json={"name": "cpu-k8s", "type": "kubernetes", "base_job_template": cpu},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    spec = pod_spec(render_job(prefect_env, "cpu-k8s", {}))
    [container] = spec["containers"]
    assert container["image"] == "galaxy-pipeline:cpu"
    assert container["resources"]["limits"] == {}
    assert container["envFrom"] == [{"secretRef": {"name": "galaxy-store"}}]
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec


def broken(kind: str) -> dict[str, Any]:
    template = json.loads(GPU_TEMPLATE.read_text())
    if kind == "undeclared variable":
        pod_spec(template["job_configuration"]["job_manifest"])["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ] = "{{ nope }}"
    elif kind == "no variables":
        del template["variables"]
    return dict(template)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("undeclared variable", "undeclared variable(s): nope"),
        ("no variables", "must contain both a `job_configuration` key and a `variables` key"),
    ],
)
def test_the_server_refuses_a_broken_template(prefect_env: dict[str, str], kind: str, message: str) -> None:
    name = f"broken-{kind.replace(' ', '-')}"
    response = httpx.post(
        f"{prefect_env['PREFECT_API_URL']}/work_pools/",
        json={"name": name, "type": "kubernetes", "base_job_template": broken(kind)},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert message in response.text
    assert httpx.get(f"{prefect_env['PREFECT_API_URL']}/work_pools/{name}", timeout=30).status_code == 404


def test_the_cli_refuses_a_broken_template(prefect_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken("undeclared variable")))
    created = prefect(
        prefect_env, "work-pool", "create", "broken-cli", "--type", "kubernetes", "--base-job-template", str(path)
    )
    assert created.returncode != 0
    assert "undeclared variable(s): nope" in created.stdout + created.stderr


def test_the_worker_refuses_a_template_whose_manifest_is_no_job(prefect_env: dict[str, str]) -> None:
    template = json.loads(GPU_TEMPLATE.read_text())
    template["job_configuration"]["job_manifest"]["kind"] = "Pod"  # the server has no opinion on this
    response = httpx.post(
        f"{prefect_env['PREFECT_API_URL']}/work_pools/",
        json={"name": "not-a-job", "type": "kubernetes", "base_job_template": template},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    with pytest.raises(ValueError, match="/kind must have value 'Job'"):
        render_job(prefect_env, "not-a-job", {})
