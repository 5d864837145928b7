"""Project-level promises: imports point one way (the library imports no Prefect; what needs no model
imports no torch; inference imports nothing of training), functions fit on a screen, prefect.yaml
is valid."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "galaxy_models"
MAX_FUNCTION_LINES = 60


def _modules(*packages: str) -> list[str]:
    """Dotted names of every module under ``galaxy_models/<package>`` (a package or a module)."""
    names = []
    for package in packages:
        path = LIBRARY / package
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for file in files:
            if file.name == "__main__.py":  # running it is what importing it does
                continue
            parts = file.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported_after(modules: list[str], baseline: str = "") -> set[str]:
    """Every module in ``sys.modules`` after importing ``modules`` in a fresh interpreter, less those
    that ``baseline`` (code run first) had already imported."""
    code = (
        "import sys, json\n"
        f"{baseline}\n"
        "before = set(sys.modules)\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(result.stdout))


def _matching(loaded: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in loaded if any(m == p or m.startswith(f"{p}.") for p in prefixes))


def test_library_modules_are_found_recursively() -> None:
    modules = _modules("")
    assert "galaxy_models.inference.classify" in modules
    assert "galaxy_models.training.loop" in modules
    assert len(modules) > 40


def test_library_does_not_import_prefect() -> None:
    assert _matching(_imported_after(_modules("")), "prefect") == []


@pytest.mark.parametrize(
    "packages",
    [("labels",), ("storage",), ("domain", "metrics", "progress", "steps"), ("catalogs",), ("registry/cards",),
     ("reports",), ("data/images", "data/splits", "data/manifest", "data/shards"), ("calibration",),
     ("inference/config",)],
    ids=lambda p: "+".join(p),
)  # fmt: skip
def test_what_needs_no_model_imports_no_torch(packages: tuple[str, ...]) -> None:
    loaded = _imported_after(_modules(*packages))
    assert _matching(loaded, "torch", "torchvision", "webdataset", "cv2", "openvino") == []


def test_catalog_export_imports_no_torch() -> None:
    """The issue's check: `python -X importtime -c "import galaxy_models.catalogs.export"` shows no torch."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import galaxy_models.catalogs.export"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "galaxy_models.catalogs.export" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_inference_imports_nothing_of_training() -> None:
    """Inference runs a published model: no training code, no launcher or process groups beyond what
    ``import torch`` itself loads, no OpenCV, no webdataset."""
    loaded = _imported_after(_modules("inference"), baseline="import torch, torchvision")
    assert _matching(loaded, "galaxy_models.training", "torch.distributed", "cv2", "webdataset") == []


def test_lower_layers_import_no_higher_ones() -> None:
    """storage/labels/domain < data, models, registry, catalogs < training, inference < cli."""
    rules = {
        ("storage", "labels", "domain", "metrics", "calibration", "progress", "steps"): (
            "galaxy_models.data", "galaxy_models.models", "galaxy_models.registry", "galaxy_models.catalogs",
            "galaxy_models.training", "galaxy_models.inference", "galaxy_models.cli",
        ),
        ("data", "models", "registry", "catalogs", "synth"): (
            "galaxy_models.training", "galaxy_models.inference", "galaxy_models.cli",
        ),
        ("training", "inference"): ("galaxy_models.cli",),
    }  # fmt: skip
    for lower, higher in rules.items():
        loaded = _imported_after(_modules(*lower))
        assert _matching(loaded, *higher) == [], lower


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, docstring included."""
    return node.end_lineno - node.lineno + 1  # type: ignore[operator]


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for file in sorted(LIBRARY.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({_lines(node)} lines)")
    assert long == []


def test_prefect_yaml_is_valid() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert isinstance(config, dict)
    assert isinstance(config.get("deployments"), list)
    for deployment in config["deployments"]:
        assert {"name", "entrypoint"} <= set(deployment)


def test_every_deployment_validates_and_the_demo_ones_serve_what_make_demo_trains() -> None:
    """Each deployment's parameters are a valid config of its flow, and `classify-flow/demo` and
    `export-flow/demo` name the model and store that `make demo` leaves behind."""
    from galaxy_models.catalogs.export import ExportConfig
    from galaxy_models.data.ingest import IngestConfig
    from galaxy_models.inference.config import ClassifyConfig
    from galaxy_models.training.config import TrainConfig

    models: dict[str, type] = {
        "flows/ingest.py:ingest_flow": IngestConfig, "flows/train.py:train_flow": TrainConfig,
        "flows/classify.py:classify_flow": ClassifyConfig, "flows/export.py:export_flow": ExportConfig,
    }  # fmt: skip
    makefile = (ROOT / "Makefile").read_text()
    demo_store = re.search(r"^STORE \?= (\S+)$", makefile, re.MULTILINE)
    assert demo_store is not None
    assert "--preset smoke" in makefile
    demos = []
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        config = models[deployment["entrypoint"]].model_validate(deployment["parameters"]["config"])
        if deployment["name"] == "demo":
            demos.append(deployment["entrypoint"])
            assert config.model == TrainConfig(preset="smoke").run_name
            assert config.store == demo_store.group(1)
    assert sorted(demos) == ["flows/classify.py:classify_flow", "flows/export.py:export_flow"]


def test_each_export_deployment_runs_when_its_classify_deployment_completes() -> None:
    """export-flow/catalog follows classify-flow/nightly and export-flow/demo follows classify-flow/demo,
    through triggers Prefect accepts; none fires on an export run (which would loop)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    followed = {}
    for deployment in deployments:
        for raw in deployment.get("triggers", []):
            trigger = DeploymentEventTrigger.model_validate(raw)
            assert trigger.expect == {"prefect.flow-run.Completed"}
            related = trigger.match_related if isinstance(trigger.match_related, list) else [trigger.match_related]
            labels = {spec.root["prefect.resource.role"]: spec.root["prefect.resource.name"] for spec in related}
            assert labels["flow"] == "classify-flow"
            followed[(deployment["entrypoint"], deployment["name"])] = labels["deployment"]
        assert "schedules" not in deployment or deployment["entrypoint"] != "flows/export.py:export_flow"
    assert followed == {
        ("flows/export.py:export_flow", "demo"): "demo",
        ("flows/export.py:export_flow", "catalog"): "nightly",
    }


def test_flow_configs_are_immutable() -> None:
    from pydantic import ValidationError

    from galaxy_models.catalogs.export import ExportConfig
    from galaxy_models.data.ingest import IngestConfig
    from galaxy_models.inference.config import ClassifyConfig
    from galaxy_models.synth.survey import SynthConfig
    from galaxy_models.training.config import TrainConfig

    configs = [
        IngestConfig(images="i", labels="l", store="s"), TrainConfig(preset="smoke"), ClassifyConfig(batches=["b1"]),
        ExportConfig(), SynthConfig(store="s", n=1),
    ]  # fmt: skip
    for config in configs:
        field = next(iter(type(config).model_fields))
        with pytest.raises(ValidationError, match="frozen"):
            setattr(config, field, getattr(config, field))
    assert ClassifyConfig(batches=["b1"]).batches == ("b1",)
