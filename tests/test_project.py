"""Project-level promises: the library imports no Prefect; prefect.yaml is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_library_does_not_import_prefect() -> None:
    modules = sorted(p.stem for p in (ROOT / "galaxy_models").glob("*.py") if p.stem != "__init__")
    code = "import sys\n" + "".join(f"import galaxy_models.{m}\n" for m in modules) + "print('prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_prefect_yaml_is_valid() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert isinstance(config, dict)
    assert isinstance(config.get("deployments"), list)
    for deployment in config["deployments"]:
        assert {"name", "entrypoint"} <= set(deployment)
