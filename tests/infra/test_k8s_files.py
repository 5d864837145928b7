"""infra/k8s's files that need no server: the prefect-worker Helm chart's values and the example Secret agree
with the work pool templates (pool, worker type, image, namespace, Secret name) and hold no credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
TEMPLATES = sorted(K8S.glob("*-base-job-template.json"))
STORE_KEYS = {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GALAXY_STORE"}


def variables(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())["variables"]["properties"])


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "worker-values.yaml").read_text())["worker"])


@pytest.fixture(scope="module")
def secret() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "secret.example.yaml").read_text()))


def test_both_templates_are_there() -> None:
    assert [path.name for path in TEMPLATES] == ["cpu-base-job-template.json", "gpu-base-job-template.json"]


def test_the_chart_runs_a_kubernetes_worker_on_the_gpu_pool(values: dict[str, Any]) -> None:
    config = values["config"]
    assert config["workPool"] == "gpu"
    assert config["type"] == "kubernetes"
    assert config["installPolicy"] == "never"  # prefect-kubernetes is in the image
    # The template comes from the JSON file (helm --set-file), so that no second copy of it can go stale.
    assert config["baseJobTemplate"] == {"configuration": None}
    assert values["apiConfig"] == "server"
    api = urlsplit(values["serverApiConfig"]["apiUrl"])
    assert api.scheme in ("http", "https")
    assert api.path == "/api"
    assert values["image"]["repository"].rsplit("/", 1)[-1] == "galaxy-pipeline"
    assert values["image"]["prefectTag"] == "cpu"  # the worker needs no CUDA; its Jobs get the template's image
    assert values["podSecurityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_the_secret_is_where_the_templates_look_for_it(secret: dict[str, Any], template: Path) -> None:
    properties = variables(template)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == properties["store_secret_name"]["default"]
    assert secret["metadata"]["namespace"] == properties["namespace"]["default"]
    assert set(secret["stringData"]) == STORE_KEYS


def test_the_example_secret_holds_placeholders_only(secret: dict[str, Any]) -> None:
    data = secret["stringData"]
    assert data["AWS_ACCESS_KEY_ID"] == "REPLACE_ME"
    assert data["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME"
    assert urlsplit(data["GALAXY_STORE"]).scheme == "s3"
    assert "data" not in secret  # base64 values would hide what is in them


def test_the_images_are_the_dockerfiles_variants() -> None:
    assert variables(K8S / "gpu-base-job-template.json")["image"]["default"] == "galaxy-pipeline:cuda"
    assert variables(K8S / "cpu-base-job-template.json")["image"]["default"] == "galaxy-pipeline:cpu"
