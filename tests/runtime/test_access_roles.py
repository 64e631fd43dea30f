"""The one table of who may call what (runtime/access.py) covers every RPC there is."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from runtime import access
from runtime.access import Caller, Role

GENERATED_ROOT = Path(__file__).resolve().parents[2] / "modelyard"


def every_rpc() -> list[str]:
    paths: list[str] = []
    for path in sorted(GENERATED_ROOT.rglob("*_pb2.py")):
        module_name = ".".join(path.relative_to(GENERATED_ROOT.parent).with_suffix("").parts)
        for service in importlib.import_module(module_name).DESCRIPTOR.services_by_name.values():
            paths.extend(f"/{service.full_name}/{method.name}" for method in service.methods)
    return paths


def test_every_rpc_of_every_service_has_a_least_role() -> None:
    rpcs = every_rpc()
    assert len(rpcs) > 30
    assert sorted(set(rpcs) - set(access.METHOD_ROLES)) == []
    assert sorted(set(access.METHOD_ROLES) - set(rpcs)) == [], "roles of RPCs that do not exist"


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        (Role.VIEWER, "/modelyard.jobs.v1.JobsService/GetTrainingJob", True),
        (Role.VIEWER, "/modelyard.jobs.v1.JobsService/CreateTrainingJob", False),
        (Role.TRAINER, "/modelyard.jobs.v1.JobsService/CreateTrainingJob", True),
        (Role.TRAINER, "/modelyard.access.v1.AccessService/CreateApiToken", False),
        (Role.ADMIN, "/modelyard.access.v1.AccessService/CreateApiToken", True),
        (Role.ADMIN, "/modelyard.access.v1.AccessService/AuthenticateApiToken", False),
        (Role.ADMIN, "/modelyard.unknown.v1.NewService/Anything", False),
    ],
)
def test_a_role_may_call_what_the_table_says(role: Role, method: str, allowed: bool) -> None:
    assert Caller("p", role).may(access.required_role(method)) is allowed


def test_only_a_services_own_call_may_authenticate_tokens() -> None:
    service = Caller("default", Role.ADMIN, is_service=True)
    assert service.may(
        access.required_role("/modelyard.access.v1.AccessService/AuthenticateApiToken")
    )


def test_api_token_text_parses_to_its_id_and_secret() -> None:
    assert access.parse_api_token("myk_0123456789abcdef_se_cr-et") == (
        "0123456789abcdef",
        "se_cr-et",
    )
    assert access.parse_api_token("myk_short_secret") is None
    assert access.parse_api_token("0123456789abcdef_secret") is None
    assert access.parse_api_token("myk_0123456789abcdef_") is None
