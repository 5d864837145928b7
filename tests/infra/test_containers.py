"""infra/docker-compose.yml and infra/Dockerfile, read as data: the stack's services, their health checks and
the order they start in, the workers' server, store and pool, the GPU reservation, the named volumes, no
credentials but local-only defaults; an image installed with the Makefile's steps, as a non-root user. The
shell snippets in both files pass `sh -n`, and where `docker compose` is installed the compose file passes
its own `config` check too."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "infra" / "docker-compose.yml"
DOCKERFILE = REPO / "infra" / "Dockerfile"
MAKEFILE = REPO / "Makefile"

WORKERS = {"worker-cpu": "cpu", "worker-gpu": "gpu"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def resolve(value: str, environment: dict[str, str] | None = None) -> str:
    """What compose makes of `value` in `environment` (empty: the file's own defaults); ${VAR} and ${VAR:-x}."""
    environment = environment or {}
    return INTERPOLATION.sub(lambda m: environment.get(m["name"]) or m["default"] or "", value)


def shell(text: str) -> str:
    """A compose command string as the container's shell sees it: `$$` is compose's escape for `$`."""
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    return compose["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else shlex.split(command)


def option(command: list[str], name: str) -> str:
    """The value after `name` in an argv list."""
    assert name in command, command
    return command[command.index(name) + 1]


# --- compose: the services and their health -------------------------------------------------------------


def test_the_stack_has_its_services(services: dict[str, Any]) -> None:
    assert set(services) == {
        "postgres", "prefect-server", "minio", "minio-setup", "prefect-deploy", "worker-cpu", "worker-gpu",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "probe"),
    [("postgres", "pg_isready"), ("prefect-server", "/api/health"), ("minio", "mc ready local")],
)
def test_long_running_services_have_health_checks(services: dict[str, Any], name: str, probe: str) -> None:
    check = services[name]["healthcheck"]
    test = check["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    assert probe in " ".join(test[1:]), test
    assert check["retries"] >= 3, check


def test_the_server_keeps_its_database_in_the_postgres_service(services: dict[str, Any]) -> None:
    server, postgres = services["prefect-server"], services["postgres"]
    url = urlsplit(server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    database = postgres["environment"]
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/" + database["POSTGRES_DB"])
    assert url.username == database["POSTGRES_USER"]
    assert url.password == database["POSTGRES_PASSWORD"]  # the same variable, with the same default
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = command_of(server)
    assert command[:3] == ["prefect", "server", "start"]
    assert option(command, "--host") == "0.0.0.0"  # reachable from the other containers
    assert option(command, "--port") == "4200"


def test_the_bucket_is_created_once_minio_is_healthy(services: dict[str, Any]) -> None:
    setup = services["minio-setup"]
    assert setup["image"].startswith("minio/mc:")
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    assert setup["restart"] == "no"
    script = shell(" ".join(command_of(setup)))
    assert "mc mb --ignore-existing" in script
    assert '"store/$GALAXY_BUCKET"' in script
    # the bucket it creates is the one the workers' store names
    bucket = resolve(setup["environment"]["GALAXY_BUCKET"])
    for worker in WORKERS:
        assert urlsplit(resolve(services[worker]["environment"]["GALAXY_STORE"])).hostname == bucket


def test_deployments_are_registered_once_the_server_is_healthy(services: dict[str, Any]) -> None:
    deploy = services["prefect-deploy"]
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    script = shell(command_of(deploy)[-1])
    assert "prefect --no-prompt deploy --all" in script
    for pool in WORKERS.values():  # the pools the workers serve exist before the deployments that use them
        assert re.search(rf"for pool in [\w ]*\b{pool}\b", script), script


# --- compose: the workers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pool"), WORKERS.items())
def test_workers_reach_the_server_and_the_store(services: dict[str, Any], name: str, pool: str) -> None:
    worker = services[name]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert worker["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    environment = worker["environment"]
    api = urlsplit(environment["PREFECT_API_URL"])
    assert (api.scheme, api.hostname, api.port, api.path) == ("http", "prefect-server", 4200, "/api")
    endpoint = urlsplit(environment["AWS_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == ("minio", 9000)
    minio = services["minio"]["environment"]
    # the workers log in as MinIO's user: the same variables, with the same defaults
    assert environment["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert environment["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert resolve(environment["GALAXY_STORE"]).startswith("s3://")
    command = command_of(worker)
    assert command[:3] == ["prefect", "worker", "start"]
    assert option(command, "--pool") == pool
    assert option(command, "--type") == "process"
    assert "galaxy-data:/app/galaxy-data" in worker["volumes"]  # the deployments' default ./galaxy-data


def test_the_gpu_worker_reserves_one_nvidia_gpu_and_runs_one_flow_at_a_time(services: dict[str, Any]) -> None:
    worker = services["worker-gpu"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    assert option(command_of(worker), "--limit") == "1"
    assert worker["profiles"] == ["gpu"]  # `up` without `--profile gpu` leaves it out on hosts without a GPU
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert worker["image"].endswith(":cuda")


def test_the_cpu_worker_reserves_no_gpu(services: dict[str, Any]) -> None:
    worker = services["worker-cpu"]
    assert "deploy" not in worker
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert worker["image"].endswith(":cpu")


def test_named_volumes_are_declared_and_used() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/", "~"))
    }
    assert used == set(compose["volumes"]) == {"postgres-data", "minio-data", "galaxy-data"}


def test_credentials_are_variables_with_local_only_defaults(services: dict[str, Any]) -> None:
    secret = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER")
    checked = 0
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                checked += 1
                match = INTERPOLATION.fullmatch(str(value))
                assert match, f"{name}: {key} is written into the file; take it from the environment"
                assert "local-only" in (match["default"] or "local-only"), f"{name}: {key}'s default"
    assert checked >= 6
    assert len(resolve(services["minio"]["environment"]["MINIO_ROOT_PASSWORD"])) >= 8  # MinIO's minimum
    # a value in the environment (or .env) replaces every default
    ours = {"AWS_SECRET_ACCESS_KEY": "from-the-environment"}
    assert resolve(services["worker-gpu"]["environment"]["AWS_SECRET_ACCESS_KEY"], ours) == "from-the-environment"


def test_published_ports_are_bound_to_loopback(services: dict[str, Any]) -> None:
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert ports
    assert all(port.startswith("127.0.0.1:") for port in ports), ports


def test_shell_snippets_parse() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    snippets = [shell(command_of(compose["services"][name])[-1]) for name in ("minio-setup", "prefect-deploy")]
    snippets += [run for keyword, run in dockerfile_instructions() if keyword == "RUN"]
    for snippet in snippets:
        snippet = re.sub(r"^(--mount=\S+\s+)+", "", snippet)
        result = subprocess.run(["sh", "-n", "-c", snippet], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{snippet}\n{result.stderr}"


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or the standalone `docker-compose`, if either works here."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    for candidate in candidates:
        if subprocess.run([*candidate, "version"], capture_output=True, timeout=60).returncode == 0:
            return candidate
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed here, so compose cannot check the file")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# --- the Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def makefile_torch_pins() -> str:
    """`torch==X torchvision==Y` from the Makefile's install recipe."""
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.MULTILINE)
    assert recipe, "no $(STAMP) recipe (the install target's) in the Makefile"
    pins = re.search(r"pip install .*?(torch==\S+ torchvision==\S+)", recipe.group(1))
    assert pins, recipe.group(1)
    return pins.group(1)


def test_the_image_installs_torch_with_the_makefiles_pins_before_the_project() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    pins = makefile_torch_pins()
    [torch_step] = [i for i, run in enumerate(runs) if pins in run]
    project = re.compile(r"pip install (?P<flags>(?:-\S+ )*)\"?\.(?:\[(?P<extras>[\w,-]+)\])?\"?(?: |$)")
    [project_step] = [i for i, run in enumerate(runs) if project.search(runs[i])]
    assert torch_step < project_step, "torch must come from its pinned wheels before the project resolves it"
    match = project.search(runs[project_step])
    assert match
    assert "-e" not in match["flags"].split(), "the image installs the project, not an editable link to it"
    extras = set((match["extras"] or "").split(",")) - {""}
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared), extras
    assert "k8s" in extras  # the same image runs the Kubernetes worker


def test_the_image_copies_what_pip_install_needs() -> None:
    copied = " ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "COPY").split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for path in ["pyproject.toml", project["project"]["readme"], "prefect.yaml", *packages]:
        assert path in copied, f"{path} is not copied into the image"


def test_the_torch_variant_is_a_build_argument() -> None:
    instructions = dockerfile_instructions()
    assert ("FROM", "python:3.11-slim") in instructions
    assert ("ARG", "TORCH_VARIANT=cpu") in instructions
    [torch_run] = [run for keyword, run in instructions if keyword == "RUN" and makefile_torch_pins() in run]
    assert "https://download.pytorch.org/whl/cpu" in torch_run
    variants = set(re.findall(r"(\w+)\) index=", torch_run))
    assert variants == {"cpu", "cuda"}
    compose = yaml.safe_load(COMPOSE.read_text())
    built = {
        service["build"]["args"]["TORCH_VARIANT"] for service in compose["services"].values() if "build" in service
    }
    assert built == variants  # compose builds both, and only what the Dockerfile accepts


def test_the_image_runs_a_worker_as_a_non_root_user_from_app() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].partition(":")[0] not in ("root", "0"), users[-1]
    assert len(keywords) - 1 - keywords[::-1].index("USER") < keywords.index("CMD")
    environment = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert "GALAXY_PIPELINE_HOME=/app" in environment  # prefect.yaml's pull step changes into it
    assert ("WORKDIR", "/app") in instructions
    assert "PREFECT_WORK_POOL=" in environment
    [command] = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert 'exec prefect worker start --pool \\"$PREFECT_WORK_POOL\\"' in command
