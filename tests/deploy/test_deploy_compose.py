"""deploy/docker-compose.yml as data: valid against the Compose specification, every
process health-checked and started in order, images pinned, secrets from files that git
ignores, and the infrastructure wired the way the services expect."""

from __future__ import annotations

import importlib.resources
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devstack.processes import venv_bin
from runtime import nats_access
from tests.deploy.deploy_support import (
    COMPOSE_FILE,
    DEPLOY,
    REPO_ROOT,
    Address,
    Process,
    compose_command,
    compose_secret_file,
    compose_secret_mounts,
    duration_seconds,
    interpolate,
    load_compose,
    modelyard_image,
    parse_address,
    shutdown_grace,
    trainer_stop_budget,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if service.get("restart") == "no":
            continue  # one-shot init step: others wait for it to complete instead
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert test[0] in ("CMD", "CMD-SHELL"), name


def test_one_shot_steps_are_awaited_to_completion(compose: dict[str, Any]) -> None:
    one_shot = {name for name, s in services(compose).items() if s.get("restart") == "no"}
    assert one_shot == {"minio-init", "nats-setup", "mlflow-setup"}
    awaited = {
        dependency
        for service in services(compose).values()
        for dependency, spec in (service.get("depends_on") or {}).items()
        if spec["condition"] == "service_completed_successfully"
    }
    assert awaited == one_shot


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services(compose), f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services(compose)[dependency], dependency


def test_services_wait_for_what_they_call_at_start(compose: dict[str, Any]) -> None:
    needs = {
        "mlflow": {"postgres", "minio-init"},
        "dataset": {"postgres", "minio-init"},
        "mlflow-setup": {"mlflow"},
        # Both Trainers log in to MLflow as the user mlflow-setup makes.
        "trainer": {"nats", "nats-setup", "dataset", "mlflow", "mlflow-setup"},
        # The serving-only Trainer (MODELYARD_TRAINER_ROLE=serving) needs no NATS.
        "trainer-serving": {"dataset", "mlflow", "mlflow-setup"},
        "jobs": {"postgres", "nats", "nats-setup", "dataset", "trainer-serving"},
        "gateway": {"dataset", "jobs", "trainer-serving"},
    }
    for name, dependencies in needs.items():
        assert dependencies <= set(services(compose)[name]["depends_on"]), name


def test_grpc_health_checks_ask_the_port_the_service_listens_on(
    compose: dict[str, Any], compose_procs: list[Process]
) -> None:
    for process in compose_procs:
        if services(compose)[process.name].get("restart") == "no":
            continue  # a one-shot step: awaited to completion, not health-checked
        test = services(compose)[process.name]["healthcheck"]["test"]
        if process.module and process.module.startswith("services."):
            assert test[1:4] == ["python", "-m", "runtime.healthcheck"], process
            listen = next(v for k, v in process.env.items() if k.endswith("_LISTEN_ADDRESS"))
            assert parse_address(test[4]).port == parse_address(listen).port, process
        elif process.module == "gateway":
            assert f":{process.env['MODELYARD_GATEWAY_PORT']}/readyz" in test[-1]
        elif process.is_dask:
            port = dask_port(process.command)
            assert f"('127.0.0.1', {port})" in test[-1], process
        else:
            assert f":{process.env['MLFLOW_PORT']}/health" in test[-1]


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        image = interpolate(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag not in ("", "latest"), f"{name}: {image} is not pinned"


def test_one_image_built_from_the_dockerfile_runs_every_modelyard_process(
    compose: dict[str, Any],
) -> None:
    builders = [s for s in services(compose).values() if "build" in s]
    assert len(builders) == 1, "one service builds the image; more would build it again"
    (build,) = [s["build"] for s in builders]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert f" AS {build['target']}\n" in (DEPLOY / "Dockerfile").read_text()
    users = {
        name for name, s in services(compose).items() if s["image"] == modelyard_image(compose)
    }
    assert users == {
        "mlflow",
        "nats-setup",
        "mlflow-setup",
        "dataset",
        "trainer",
        "trainer-serving",
        "jobs",
        "gateway",
        "dask-scheduler",
        "dask-worker",
    }


def test_the_image_entrypoint_is_kept(compose: dict[str, Any]) -> None:
    """An `entrypoint:` would skip the step that exports the secrets."""
    for name, service in services(compose).items():
        if service["image"] == modelyard_image(compose):
            assert "entrypoint" not in service, name
            assert compose_command(service), name


def test_secrets_are_files_that_git_ignores(compose: dict[str, Any]) -> None:
    defined = compose["secrets"]
    used = {
        source
        for service in services(compose).values()
        for source in compose_secret_mounts(service).values()
    }
    assert used == set(defined), "a secret defined but unused, or used but undefined"
    for name in defined:
        path = compose_secret_file(compose, name)
        assert path.parent == DEPLOY / "secrets", name
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT, check=False
        )
        assert ignored.returncode == 0, f"{path} would be committed"


def test_buckets_the_init_step_creates_are_the_ones_used(compose: dict[str, Any]) -> None:
    init = services(compose)["minio-init"]["environment"]
    dataset = services(compose)["dataset"]["environment"]
    mlflow = services(compose)["mlflow"]["environment"]
    assert dataset["MODELYARD_DATASET_S3_BUCKET"] == init["DATASETS_BUCKET"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].rstrip("/") == f"s3://{init['ARTIFACTS_BUCKET']}"
    assert parse_address(init["MINIO_URL"]) == parse_address(mlflow["MLFLOW_S3_ENDPOINT_URL"])
    assert parse_address(init["MINIO_URL"]) == parse_address(
        dataset["MODELYARD_DATASET_S3_ENDPOINT_URL"]
    )


def test_postgres_creates_every_database_a_service_uses(compose: dict[str, Any]) -> None:
    postgres = services(compose)["postgres"]
    mounted = set(compose_secret_mounts(postgres).values())
    url_secrets = {
        source
        for name, service in services(compose).items()
        if name != "postgres"
        for target, source in compose_secret_mounts(service).items()
        if target.endswith(("DATABASE_URL", "BACKEND_STORE_URI"))
    }
    assert url_secrets == {"dataset_database_url", "jobs_database_url", "mlflow_backend_store_uri"}
    assert url_secrets <= mounted
    init_mount = next(v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v)
    script = (COMPOSE_FILE.parent / init_mount.split(":")[0]).resolve()
    for secret in url_secrets:
        assert f"create_database_from_url {secret}" in script.read_text()


def test_mlflow_serves_artifacts_and_allows_the_trainer_host(
    compose: dict[str, Any], compose_procs: list[Process]
) -> None:
    mlflow = services(compose)["mlflow"]
    assert mlflow["command"] == ["mlflow-server"]
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    trainer = next(p for p in compose_procs if p.name == "trainer")
    assert trainer.env["MODELYARD_TRAINER_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_trainer_stop_grace_covers_finishing_or_handing_back_its_job(
    compose_procs: list[Process], compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = next(p for p in compose_procs if p.name == "trainer")
    grace = duration_seconds(services(compose)["trainer"]["stop_grace_period"])
    assert grace >= trainer_stop_budget(trainer, monkeypatch)


def test_other_services_stop_within_their_grace(
    compose_procs: list[Process], compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for process in compose_procs:
        if process.settings_class is None or process.module == "services.training":
            continue
        grace = duration_seconds(services(compose)[process.name].get("stop_grace_period", "10s"))
        assert grace >= shutdown_grace(process, monkeypatch) + 5, process


def test_only_the_gateway_and_the_mlflow_ui_are_published(compose: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services(compose).items() if "ports" in s}
    assert set(published) == {"gateway", "mlflow"}
    # The MLflow UI holds every model: reachable from this host only.
    assert all(port.startswith("127.0.0.1:") for port in published["mlflow"])


def test_data_lives_on_named_volumes(compose: dict[str, Any]) -> None:
    for name, path in (
        ("postgres", "/var/lib/postgresql/data"),
        ("minio", "/data"),
        ("nats", "/data"),
    ):
        volumes = services(compose)[name]["volumes"]
        sources = [v.split(":")[0] for v in volumes if v.split(":")[1] == path]
        assert sources, f"{name} keeps {path} in the container"
        assert sources[0] in compose["volumes"], name
    assert services(compose)["nats"]["entrypoint"] == ["/bin/sh", "/etc/nats/start.sh"]
    nats_command = shlex.split((DEPLOY / "nats" / "start.sh").read_text().splitlines()[-1])
    assert "--jetstream" in nats_command
    assert nats_command[nats_command.index("--store_dir") + 1] == "/data"


def test_nats_runs_the_permission_table_with_passwords_from_secrets(
    compose: dict[str, Any], secrets_dir: Path, tmp_path: Path
) -> None:
    """The mounted configuration is the table's rendering, every password it reads is a
    secret of the nats service, and nats-server accepts the file."""
    config = DEPLOY / "nats" / "nats-server.conf"
    assert config.read_text() == nats_access.deploy_config()
    nats = services(compose)["nats"]
    assert "./nats/nats-server.conf:/etc/nats/nats-server.conf:ro" in nats["volumes"]
    targets = {entry["target"]: entry["source"] for entry in nats["secrets"]}
    assert set(targets) == {nats_access.password_variable(u) for u in nats_access.PERMISSIONS}
    environment = {name: (secrets_dir / source).read_text() for name, source in targets.items()}
    checked = subprocess.run(
        [venv_bin("nats-server"), "-c", str(config), "-t"],
        env={"PATH": "/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_each_service_logs_in_to_nats_as_its_own_user(compose: dict[str, Any]) -> None:
    users = {
        name: services(compose)[name]["environment"][f"MODELYARD_{prefix}_NATS_USER"]
        for name, prefix in (("jobs", "JOBS"), ("trainer", "TRAINER"))
    }
    assert users == {"jobs": nats_access.JOBS, "trainer": nats_access.TRAINER}
    setup = services(compose)["nats-setup"]
    assert setup["environment"]["MODELYARD_NATS_SETUP_USER"] == nats_access.ADMIN
    nats_secrets = {
        entry["target"]: entry["source"] for entry in services(compose)["nats"]["secrets"]
    }
    passwords = {
        name: {entry["target"]: entry["source"] for entry in services(compose)[name]["secrets"]}
        for name in ("jobs", "trainer", "nats-setup")
    }
    assert (
        passwords["jobs"]["MODELYARD_JOBS_NATS_PASSWORD"]
        == nats_secrets[nats_access.password_variable(nats_access.JOBS)]
    )
    assert (
        passwords["trainer"]["MODELYARD_TRAINER_NATS_PASSWORD"]
        == nats_secrets[nats_access.password_variable(nats_access.TRAINER)]
    )
    assert (
        passwords["nats-setup"]["MODELYARD_NATS_SETUP_PASSWORD"]
        == nats_secrets[nats_access.password_variable(nats_access.ADMIN)]
    )


def test_secret_files_exist_after_generation(compose: dict[str, Any], secrets_dir: Path) -> None:
    for name in compose["secrets"]:
        assert (secrets_dir / compose_secret_file(compose, name).name).is_file(), name


def dask_port(command: list[str]) -> int:
    """The port a `dask scheduler` / `dask worker` command listens on."""
    flag = "--port" if command[1] == "scheduler" else "--worker-port"
    return int(command[command.index(flag) + 1])


def test_dask_holds_no_secret_and_the_trainer_reaches_its_scheduler(
    compose: dict[str, Any], compose_procs: list[Process]
) -> None:
    dask = {process.name: process for process in compose_procs if process.is_dask}
    assert set(dask) == {"dask-scheduler", "dask-worker"}
    for name, process in dask.items():
        # Workers read datasets through presigned URLs: no credential of any kind.
        assert not process.secret_env, name
        assert not [key for key in process.env if "MODELYARD" in key or "AWS" in key], name
        assert "ports" not in services(compose)[name], name
    trainer = next(process for process in compose_procs if process.name == "trainer")
    scheduler = parse_address(trainer.env["MODELYARD_TRAINER_DASK_SCHEDULER_ADDRESS"])
    assert scheduler == Address("dask-scheduler", dask_port(dask["dask-scheduler"].command))
    worker = dask["dask-worker"].command
    assert worker[2] == f"tcp://dask-scheduler:{scheduler.port}"
    assert services(compose)["dask-worker"]["deploy"]["replicas"] >= 2
