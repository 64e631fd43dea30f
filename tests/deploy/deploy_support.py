"""The deployments as data: docker compose services and Kubernetes objects, read from
`deploy/`, and the processes they run with the environment each one gets.

A `Process` is one container running modelyard's image, whichever the platform:
its command, its literal environment, and the environment it gets from secrets
(with the secret's value, taken from a directory made by deploy/generate-secrets.sh).
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic.fields import FieldInfo

from gateway.settings import GatewaySettings
from runtime.settings import CommonSettings
from services.dataset.settings import DatasetSettings
from services.jobs.settings import JobsSettings
from services.training.settings import TrainerSettings
from services.training.work.worker import FETCH_TIMEOUT_SECONDS, HAND_BACK_WAIT_SECONDS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
GENERATE_SECRETS = DEPLOY / "generate-secrets.sh"

# What the image's entrypoint turns into environment variables (deploy/entrypoint.sh).
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
SECRETS_MOUNT = "/run/secrets"

SETTINGS_BY_MODULE: dict[str, type[CommonSettings]] = {
    "services.dataset": DatasetSettings,
    "services.jobs": JobsSettings,
    "services.training": TrainerSettings,
    "gateway": GatewaySettings,
}
MLFLOW_SERVER_COMMAND = "mlflow-server"
DASK_COMMAND = "dask"


# -- settings classes ---------------------------------------------------------------------


def env_name(settings: type[CommonSettings], field_name: str, info: FieldInfo) -> str:
    """The environment variable pydantic-settings reads for a field."""
    alias = info.validation_alias
    if alias is None:
        prefix = str(settings.model_config.get("env_prefix", ""))
        return (prefix + field_name).upper()
    if isinstance(alias, str):
        return alias.upper()
    raise AssertionError(f"{settings.__name__}.{field_name}: alias {alias!r} not understood")


def settings_env_names(settings: type[CommonSettings]) -> dict[str, str]:
    """Environment variable name -> field name, for every field of a settings class."""
    return {env_name(settings, name, info): name for name, info in settings.model_fields.items()}


# -- processes ------------------------------------------------------------------------------


@dataclass
class Process:
    platform: str  # "compose" or "k8s"
    name: str  # compose service, or k8s Deployment
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # literal values
    secret_env: dict[str, str] = field(default_factory=dict)  # env name -> secret reference
    secret_values: dict[str, str] = field(default_factory=dict)  # env name -> generated value

    @property
    def module(self) -> str | None:
        """`services.dataset` for `python -m services.dataset`, else None."""
        if len(self.command) >= 3 and self.command[1] == "-m":
            return self.command[2]
        return None

    @property
    def settings_class(self) -> type[CommonSettings] | None:
        return SETTINGS_BY_MODULE.get(self.module or "")

    @property
    def is_mlflow_server(self) -> bool:
        return bool(self.command) and self.command[0] == MLFLOW_SERVER_COMMAND

    @property
    def is_dask(self) -> bool:
        """A Dask scheduler or worker (`dask scheduler`, `dask worker ...`)."""
        return bool(self.command) and self.command[0] == DASK_COMMAND

    def all_env_names(self) -> set[str]:
        return set(self.env) | set(self.secret_env)

    def full_env(self) -> dict[str, str]:
        return self.env | self.secret_values

    def __str__(self) -> str:
        return f"{self.platform}:{self.name}"


def modelyard(processes: list[Process]) -> list[Process]:
    """The processes running one of the four modelyard programs."""
    return [process for process in processes if process.settings_class is not None]


def load_settings(process: Process, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """The process's settings object, built from exactly the environment it is given."""
    settings_class = process.settings_class
    assert settings_class is not None, process
    with monkeypatch.context() as patch:
        for name in settings_env_names(settings_class):
            patch.delenv(name, raising=False)
        for name, value in process.full_env().items():
            patch.setenv(name, value)
        return settings_class()


def listen_address(settings: CommonSettings) -> Address:
    """Where a process listens: its gRPC listen address, or the gateway's host and port."""
    if isinstance(settings, GatewaySettings):
        return Address(settings.host, settings.port)
    assert isinstance(settings, DatasetSettings | JobsSettings | TrainerSettings)
    return parse_address(settings.listen_address)


# Margin for draining NATS and closing channels after the worker has stopped.
STOP_MARGIN_SECONDS = 5.0


def shutdown_grace(process: Process, monkeypatch: pytest.MonkeyPatch) -> float:
    return load_settings(process, monkeypatch).shutdown_grace_seconds


def trainer_stop_budget(process: Process, monkeypatch: pytest.MonkeyPatch) -> float:
    """How long a Trainer may take to stop on SIGTERM (services/training/work/worker.py).

    It stops fetching (a pull in flight ends within FETCH_TIMEOUT_SECONDS + 2), gives its
    running job the shutdown grace to finish, then stops it and waits up to
    HAND_BACK_WAIT_SECONDS for the hand-back. The platform must wait at least that long
    before it kills the process, and at least the ack wait, so that a job still running is
    heartbeated, not redelivered to a second Trainer while the first one still trains it.
    """
    settings = load_settings(process, monkeypatch)
    assert isinstance(settings, TrainerSettings)
    if settings.worker_slots == 0:
        return settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
    stop = (
        FETCH_TIMEOUT_SECONDS
        + 2
        + settings.shutdown_grace_seconds
        + HAND_BACK_WAIT_SECONDS
        + STOP_MARGIN_SECONDS
    )
    return max(stop, settings.ack_wait_seconds)


# -- docker compose -------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set in the environment."""
    return _INTERPOLATION.sub(lambda match: match.group(2) or "", value)


@functools.cache
def _parse_yaml(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def parse_yaml(path: Path) -> list[Any]:
    """The documents of a YAML file (parsed once; each caller gets its own copy)."""
    return copy.deepcopy(_parse_yaml(path))


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = parse_yaml(COMPOSE_FILE)[0]
    return document


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def compose_secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    """File name under /run/secrets -> secret name, for one service."""
    mounts: dict[str, str] = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            mounts[entry] = entry
            continue
        target = str(entry.get("target") or entry["source"])
        if target.startswith("/"):
            directory, _, target = target.rpartition("/")
            if directory != SECRETS_MOUNT:
                continue  # mounted elsewhere: not turned into a variable
        mounts[target] = entry["source"]
    return mounts


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def modelyard_image(compose: dict[str, Any]) -> str:
    """The image compose builds from deploy/Dockerfile (one service builds it)."""
    (built,) = [s["image"] for s in compose["services"].values() if "build" in s]
    return str(built)


def compose_processes(secrets_dir: Path) -> list[Process]:
    compose = load_compose()
    processes = []
    for name, service in compose["services"].items():
        if service["image"] != modelyard_image(compose):
            continue
        mounts = compose_secret_mounts(service)
        secret_env = {target: source for target, source in mounts.items() if ENV_NAME.match(target)}
        processes.append(
            Process(
                platform="compose",
                name=name,
                command=compose_command(service),
                env=compose_environment(service),
                secret_env=secret_env,
                secret_values={
                    target: compose_secret_value(compose, source, secrets_dir)
                    for target, source in secret_env.items()
                },
            )
        )
    return processes


def compose_secret_file(compose: dict[str, Any], secret: str) -> Path:
    file = str(compose["secrets"][secret]["file"])
    return (COMPOSE_FILE.parent / file).resolve()


def compose_secret_value(compose: dict[str, Any], secret: str, secrets_dir: Path) -> str:
    """The generated value of a compose secret: its file, read from `secrets_dir` instead."""
    return (secrets_dir / compose_secret_file(compose, secret).name).read_text()


def duration_seconds(value: str | int | float) -> float:
    """Compose durations: `1m30s`, `90s`, `500ms`."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", value)
    assert "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# -- Kubernetes -----------------------------------------------------------------------------


def load_kustomization() -> dict[str, Any]:
    document: dict[str, Any] = parse_yaml(K8S_DIR / "kustomization.yaml")[0]
    return document


def load_k8s_objects() -> list[dict[str, Any]]:
    """Every object of the resources the kustomization lists, in order."""
    return [
        document
        for resource in load_kustomization()["resources"]
        for document in parse_yaml(K8S_DIR / resource)
    ]


def k8s_objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in load_k8s_objects() if o["kind"] == kind}


def secret_generator_files() -> dict[tuple[str, str], Path]:
    """(Secret name, key) -> file, from the kustomization's secretGenerator."""
    files = {}
    for generator in load_kustomization().get("secretGenerator", []):
        for entry in generator.get("files", []):
            key, _, path = entry.partition("=")
            if not path:
                key, path = Path(entry).name, entry
            files[(generator["name"], key)] = K8S_DIR / path
    return files


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def k8s_processes(secrets_dir: Path) -> list[Process]:
    config_maps = k8s_objects_of("ConfigMap")
    generated = secret_generator_files()
    processes = []
    for name, deployment in k8s_objects_of("Deployment").items():
        for container in containers(deployment):
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env |= config_maps[source["configMapRef"]["name"]]["data"]
            secret_env: dict[str, str] = {}
            secret_values: dict[str, str] = {}
            for variable in container.get("env", []):
                if "value" in variable:
                    env[variable["name"]] = str(variable["value"])
                    continue
                reference = variable["valueFrom"]["secretKeyRef"]
                secret_env[variable["name"]] = f"{reference['name']}/{reference['key']}"
                file = generated.get((reference["name"], reference["key"]))
                assert file, f"{name}: no generated Secret {reference['name']}/{reference['key']}"
                secret_values[variable["name"]] = (secrets_dir / file.name).read_text()
            processes.append(
                Process(
                    platform="k8s",
                    name=name,
                    command=[*container.get("command", []), *container.get("args", [])],
                    env=env,
                    secret_env=secret_env,
                    secret_values=secret_values,
                )
            )
    return processes


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pods_selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    """Deployments whose pods carry every label of `selector`."""
    return [
        deployment
        for deployment in k8s_objects_of("Deployment").values()
        if selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    ]


# -- generated secrets, addresses -------------------------------------------------------------


def generate_secrets(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(GENERATE_SECRETS), str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


@dataclass(frozen=True)
class Address:
    host: str
    port: int


def parse_address(value: str, default_port: int | None = None) -> Address:
    """`host:port`, or a URL (`nats://nats:4222`, `postgresql://u:p@postgres:5432/db`)."""
    text = value if "://" in value else f"tcp://{value}"
    parts = urlsplit(text)
    port = parts.port or default_port
    assert parts.hostname, f"no host in {value!r}"
    assert port, f"no port in {value!r}"
    return Address(parts.hostname, port)


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text().splitlines()
