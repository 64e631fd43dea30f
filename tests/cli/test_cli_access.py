"""`modelyard projects …` and `modelyard tokens …` against a live stack: an admin of
`default` makes a project and tokens, the printed secret works with its role, a revoked
one stops working (exit 5: authentication)."""

from __future__ import annotations

import time

import pytest

from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_projects_create_and_list(cli: Cli) -> None:
    created = cli("projects", "create", "cli-team", "--display-name", "CLI team")
    assert created.code == 0, created
    assert "created project cli-team" in created.stdout
    listed = cli("projects", "list", "--output", "json")
    assert listed.code == 0, listed
    assert {"default", "cli-team"} <= {p["projectId"] for p in listed.json()}


def test_a_created_token_works_with_its_role_until_revoked(cli: Cli) -> None:
    made = cli("tokens", "create", "--role", "viewer", "--display-name", "dashboards")
    assert made.code == 0, made
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("myk_")
    token_id = secret.split("_")[1]

    listed = cli("tokens", "list")
    assert listed.code == 0, listed
    assert token_id in listed.stdout
    assert "viewer" in listed.stdout
    assert secret not in listed.stdout

    as_viewer = cli("jobs", "list", MODELYARD_TOKEN=secret)
    assert as_viewer.code == 0, as_viewer
    refused = cli("projects", "create", "not-allowed", MODELYARD_TOKEN=secret)
    assert refused.code != 0
    assert "ROLE_INSUFFICIENT" in refused.stderr

    revoked = cli("tokens", "revoke", token_id)
    assert revoked.code == 0, revoked
    assert f"revoked token {token_id}" in revoked.stdout
    # The gateway trusts a checked token for its cache time (2 s in this stack).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = cli("jobs", "list", MODELYARD_TOKEN=secret)
        if after.code != 0:
            break
        time.sleep(0.5)
    assert after.code == 5, after
    assert "API_TOKEN_INVALID" in after.stderr


def test_tokens_of_another_project_and_an_expiry(cli: Cli) -> None:
    cli("projects", "create", "cli-other")
    made = cli(
        "tokens",
        "create",
        "--project",
        "cli-other",
        "--role",
        "trainer",
        "--expires-in",
        "3600",
        "--output",
        "json",
    )
    assert made.code == 0, made
    token = made.json()["apiToken"]
    assert token["projectId"] == "cli-other"
    assert token["role"] == "ROLE_TRAINER"
    assert token["expireTime"]
