"""What every process of both deployments is told, checked against the code that reads it.

Run once per platform (docker compose, Kubernetes): each `MODELYARD_*` variable is a real
setting of that process (a renamed setting breaks this test), the settings a container
needs are set and parse, addresses point at a process of the right kind listening on that
port, credentials reach only the processes that need them, and no secret is a literal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from runtime.settings import CommonSettings
from services.dataset.settings import DatasetSettings
from services.jobs.settings import JobsSettings
from services.training.settings import TrainerSettings
from tests.deploy.deploy_support import (
    Address,
    Process,
    k8s_objects_of,
    listen_address,
    load_compose,
    load_settings,
    modelyard,
    parse_address,
    pods_selected,
    settings_env_names,
)

# Settings whose embedded default is for a bare machine and wrong in a container.
MUST_SET: dict[type[CommonSettings], set[str]] = {
    DatasetSettings: {"listen_address", "database_url", "blob_store", "s3_endpoint_url"},
    JobsSettings: {"listen_address", "database_url", "nats_url"},
    TrainerSettings: {"listen_address", "nats_url", "mlflow_tracking_uri", "mlflow_username"},
    GatewaySettings: {"host", "api_tokens", "dev_mode"},
}
# Every process shares one service token; left unset, each container would make its own.
MUST_SET_EVERYWHERE = {"service_token"}

# Which process an address setting must reach.
ADDRESS_TARGETS = {
    "dataset_service_address": "services.dataset",
    "jobs_service_address": "services.jobs",
    "trainer_service_address": "services.training",
}
# Infrastructure outside the four processes: where each listens.
INFRASTRUCTURE_PORTS = {"postgres": 5432, "nats": 4222, "minio": 9000, "mlflow": 5000}
# In Kubernetes these run outside the manifests, as Services of these names
# (docs/operations.md, "Kubernetes").
K8S_EXTERNAL_SERVICES = INFRASTRUCTURE_PORTS

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|DATABASE_URL|STORE_URI")
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
OBJECT_STORE_CREDENTIAL = re.compile(
    r"^(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN)$"
)


def test_both_deployments_run_the_four_processes(platform_procs: list[Process]) -> None:
    modules = {process.module for process in modelyard(platform_procs)}
    assert modules == {"services.dataset", "services.jobs", "services.training", "gateway"}


def test_compose_runs_the_mlflow_server_from_the_same_image(compose_procs: list[Process]) -> None:
    assert [process.name for process in compose_procs if process.is_mlflow_server] == ["mlflow"]


def test_every_modelyard_variable_is_a_setting_of_its_process(
    platform_procs: list[Process],
) -> None:
    unknown = [
        f"{process}: {name}"
        for process in modelyard(platform_procs)
        for name in sorted(process.all_env_names())
        if name.startswith("MODELYARD_") and name not in settings_env_names(process.settings_class)  # type: ignore[arg-type]
    ]
    assert unknown == []


def test_no_other_variables_reach_the_services(platform_procs: list[Process]) -> None:
    """Anything else is a mistake, or a credential that should not be there."""
    allowed = {"dataset": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}
    extra = [
        f"{process}: {name}"
        for process in modelyard(platform_procs)
        for name in sorted(process.all_env_names())
        if not name.startswith("MODELYARD_")
        and name not in allowed.get(process.module.split(".")[-1], set())  # type: ignore[union-attr]
    ]
    assert extra == []


def test_settings_a_container_needs_are_set(platform_procs: list[Process]) -> None:
    missing = []
    for process in modelyard(platform_procs):
        settings_class = process.settings_class
        assert settings_class is not None
        names = settings_env_names(settings_class)
        given = {names[name] for name in process.all_env_names() if name in names}
        loopback_defaults = {
            name
            for name, info in settings_class.model_fields.items()
            if isinstance(info.default, str) and "127.0.0.1" in info.default
        }
        needed = MUST_SET[settings_class] | MUST_SET_EVERYWHERE | loopback_defaults
        missing += [f"{process}: {name}" for name in sorted(needed - given)]
    assert missing == []


def test_settings_parse_and_fit_a_container(
    platform_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    for process in modelyard(platform_procs):
        settings = load_settings(process, monkeypatch)
        assert settings.service_token is not None, process
        # Loopback would be unreachable from the other containers.
        listen = listen_address(settings)
        assert listen.host == "0.0.0.0", f"{process} listens on {listen}"
        if isinstance(settings, GatewaySettings):
            assert settings.api_tokens, process
            assert settings.dev_mode is False, process
        if isinstance(settings, DatasetSettings | JobsSettings):
            # The embedded SQLite default would live and die with the container.
            assert settings.resolved_database_url().startswith("postgresql://"), process
        if isinstance(settings, DatasetSettings):
            assert settings.blob_store == "s3", process


def test_every_process_is_given_the_same_service_token(platform_procs: list[Process]) -> None:
    tokens = {
        process.secret_values["MODELYARD_SERVICE_TOKEN"] for process in modelyard(platform_procs)
    }
    assert len(tokens) == 1


def listeners(processes: list[Process], monkeypatch: pytest.MonkeyPatch) -> dict[Address, str]:
    """host:port -> what listens there ("services.jobs", "postgres", ...), per platform."""
    found: dict[Address, str] = {}
    platform = processes[0].platform
    if platform == "compose":
        compose = load_compose()
        for name, port in INFRASTRUCTURE_PORTS.items():
            assert name in compose["services"], f"compose has no {name}"
            found[Address(name, port)] = name
        for process in modelyard(processes):
            found[Address(process.name, listen_port(process, monkeypatch))] = process.module or ""
        for process in processes:
            if process.is_dask and process.command[1] == "scheduler":
                port = int(process.command[process.command.index("--port") + 1])
                found[Address(process.name, port)] = process.name
        return found
    for name, port in K8S_EXTERNAL_SERVICES.items():
        found[Address(name, port)] = name
    by_deployment = {process.name: process for process in modelyard(processes)}
    for name, service in k8s_objects_of("Service").items():
        for deployment in pods_selected(service["spec"]["selector"]):
            if deployment["metadata"]["name"] not in by_deployment:  # Dask: not a setting owner
                for service_port in service["spec"]["ports"]:
                    found[Address(name, service_port["port"])] = deployment["metadata"]["name"]
                continue
            process = by_deployment[deployment["metadata"]["name"]]
            port = listen_port(process, monkeypatch)
            for service_port in service["spec"]["ports"]:
                if target_port_number(deployment, service_port["targetPort"]) == port:
                    found[Address(name, service_port["port"])] = process.module or ""
    return found


def listen_port(process: Process, monkeypatch: pytest.MonkeyPatch) -> int:
    return listen_address(load_settings(process, monkeypatch)).port


def target_port_number(deployment: dict[str, object], target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for container in deployment["spec"]["template"]["spec"]["containers"]:  # type: ignore[index]
        for port in container.get("ports", []):
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def test_addresses_reach_a_process_of_the_right_kind(
    platform_procs: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    listening = listeners(platform_procs, monkeypatch)
    wrong = []
    for process in modelyard(platform_procs):
        settings = load_settings(process, monkeypatch)
        targets = {
            field: (getattr(settings, field), module)
            for field, module in ADDRESS_TARGETS.items()
            if hasattr(settings, field)
        }
        for field, infra in (
            ("nats_url", "nats"),
            ("mlflow_tracking_uri", "mlflow"),
            ("s3_endpoint_url", "minio"),
            ("database_url", "postgres"),
            ("dask_scheduler_address", "dask-scheduler"),
        ):
            if getattr(settings, field, None):
                targets[field] = (getattr(settings, field), infra)
        for field, (value, expected) in targets.items():
            address = parse_address(value, default_port=INFRASTRUCTURE_PORTS.get(expected))
            found = listening.get(address)
            if found != expected:
                wrong.append(f"{process}.{field}={value}: {found or 'nothing'} listens there")
    assert wrong == []


MLFLOW_SETUP_MODULE = "runtime.mlflow_setup"


def test_mlflow_credentials_only_reach_the_trainer(
    platform_procs: list[Process], secrets_dir: Path
) -> None:
    # By name: MODELYARD_TRAINER_MLFLOW_*, MLFLOW_TRACKING_*, anything about MLflow.
    leaks = [
        f"{process}: {name}"
        for process in platform_procs
        if process.module not in ("services.training", MLFLOW_SETUP_MODULE)
        and not process.is_mlflow_server
        for name in sorted(process.all_env_names())
        if "MLFLOW" in name
    ]
    assert leaks == []
    # By value, whatever the variable is called: the Trainer has its own user's password.
    trainer_password = (secrets_dir / "mlflow_trainer_password").read_text()
    holders = {
        process.module or "mlflow-server"
        for process in platform_procs
        if trainer_password in process.secret_values.values()
    }
    assert holders <= {"services.training", MLFLOW_SETUP_MODULE}
    for process in platform_procs:
        if process.module == "services.training":
            # Through its own settings; MLflow's variables are set by the Trainer itself.
            assert not any(name.startswith("MLFLOW_") for name in process.all_env_names())
            assert process.secret_values["MODELYARD_TRAINER_MLFLOW_PASSWORD"] == trainer_password


def test_the_mlflow_admin_password_reaches_the_setup_step_alone(
    platform_procs: list[Process], secrets_dir: Path
) -> None:
    admin_password = (secrets_dir / "mlflow_admin_password").read_text()
    holders = {
        process.module or "mlflow-server"
        for process in platform_procs
        if admin_password in process.secret_values.values()
    }
    assert "services.training" not in holders
    assert holders <= {"mlflow-server", MLFLOW_SETUP_MODULE}


def test_object_store_credentials_only_reach_mlflow_and_the_dataset_service(
    platform_procs: list[Process], secrets_dir: Path
) -> None:
    keys = {
        (secrets_dir / name).read_text()
        for name in ("dataset_s3_secret_key", "mlflow_s3_secret_key", "minio_root_password")
    }
    holders = {
        str(process)
        for process in platform_procs
        if any(OBJECT_STORE_CREDENTIAL.match(name) for name in process.all_env_names())
        or keys & set(process.secret_values.values())
    }
    platform = platform_procs[0].platform
    expected = {f"{platform}:dataset"} | ({"compose:mlflow"} if platform == "compose" else set())
    assert holders == expected


def test_the_dataset_service_and_mlflow_use_different_object_store_users(
    compose_procs: list[Process],
) -> None:
    by_name = {process.name: process for process in compose_procs}
    dataset, mlflow = by_name["dataset"], by_name["mlflow"]
    assert dataset.secret_env["AWS_ACCESS_KEY_ID"] != mlflow.secret_env["AWS_ACCESS_KEY_ID"]
    assert dataset.secret_values["AWS_ACCESS_KEY_ID"] != mlflow.secret_values["AWS_ACCESS_KEY_ID"]


def test_the_trainer_logs_in_as_the_user_the_setup_step_creates(
    compose_procs: list[Process],
) -> None:
    by_name = {process.name: process for process in compose_procs}
    trainer, mlflow, setup = by_name["trainer"], by_name["mlflow"], by_name["mlflow-setup"]
    assert setup.module == MLFLOW_SETUP_MODULE
    # Setup logs in as the admin the MLflow server creates...
    assert (
        setup.secret_values["MODELYARD_MLFLOW_SETUP_ADMIN_PASSWORD"]
        == mlflow.secret_values["MLFLOW_AUTH_ADMIN_PASSWORD"]
    )
    admin = mlflow.env.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")  # deploy/mlflow-server.sh
    assert setup.env.get("MODELYARD_MLFLOW_SETUP_ADMIN_USERNAME", "admin") == admin
    # ...and makes the user both Trainers log in as, with the password they are given.
    for name in ("trainer", "trainer-serving"):
        process = by_name[name]
        assert (
            process.env["MODELYARD_TRAINER_MLFLOW_USERNAME"]
            == (setup.env["MODELYARD_MLFLOW_SETUP_TRAINER_USERNAME"])
        )
        assert process.env["MODELYARD_TRAINER_MLFLOW_USERNAME"] != admin
        assert (
            process.secret_values["MODELYARD_TRAINER_MLFLOW_PASSWORD"]
            == setup.secret_values["MODELYARD_MLFLOW_SETUP_TRAINER_PASSWORD"]
        )
    tracking = parse_address(trainer.env["MODELYARD_TRAINER_MLFLOW_TRACKING_URI"])
    assert (
        setup.env["MODELYARD_MLFLOW_SETUP_TRACKING_URI"]
        == (trainer.env["MODELYARD_TRAINER_MLFLOW_TRACKING_URI"])
    )
    # MLflow answers only the Host headers it allows: the one the Trainer sends among them.
    allowed = mlflow.env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"{tracking.host}:{tracking.port}" in allowed
    assert str(tracking.port) == mlflow.env["MLFLOW_PORT"]


def test_secrets_are_never_literal_values(platform_procs: list[Process]) -> None:
    literal = [
        f"{process}: {name}"
        for process in platform_procs
        for name, value in process.env.items()
        if SECRET_NAME.search(name) or CREDENTIALS_IN_URL.search(value)
    ]
    assert literal == []
    for process in platform_procs:
        for name, value in process.secret_values.items():
            assert value, f"{process}: {name} is empty"
            assert value == value.strip(), f"{process}: {name} has surrounding whitespace"


def test_compose_infrastructure_takes_secrets_from_files() -> None:
    compose = load_compose()
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        mounted = {
            entry if isinstance(entry, str) else entry.get("target", entry["source"])
            for entry in service.get("secrets") or []
        }
        for variable, value in environment.items():
            if variable.endswith("_FILE"):
                file = Path(str(value)).name
                assert file in mounted, f"{name}: {variable} names an unmounted secret"
            else:
                assert not SECRET_NAME.search(variable), f"{name}: {variable} is a literal"
                assert not CREDENTIALS_IN_URL.search(str(value)), f"{name}: {variable}"


def test_only_minio_and_its_init_step_hold_the_minio_root_password() -> None:
    compose = load_compose()
    holders = {
        name
        for name, service in compose["services"].items()
        for entry in service.get("secrets") or []
        if (entry if isinstance(entry, str) else entry["source"]) == "minio_root_password"
    }
    assert holders == {"minio", "minio-init"}
