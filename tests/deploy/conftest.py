"""Fixtures of the deployment checks: secrets made by the real generator, and the processes
of both deployments (docker compose and Kubernetes) with the environment each gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.deploy_support import Process, compose_processes, generate_secrets, k8s_processes


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("deploy") / "secrets"
    generate_secrets(directory)
    return directory


@pytest.fixture(scope="session")
def compose_procs(secrets_dir: Path) -> list[Process]:
    return compose_processes(secrets_dir)


@pytest.fixture(scope="session")
def k8s_procs(secrets_dir: Path) -> list[Process]:
    return k8s_processes(secrets_dir)


@pytest.fixture(scope="session", params=["compose", "k8s"])
def platform_procs(
    request: pytest.FixtureRequest, compose_procs: list[Process], k8s_procs: list[Process]
) -> list[Process]:
    """The processes of one deployment; tests using it run once per platform."""
    return compose_procs if request.param == "compose" else k8s_procs
