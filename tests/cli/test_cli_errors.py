"""What a script can rely on when things go wrong: one line on stderr with the
status and reason code, and a documented exit code for each kind of failure."""

from __future__ import annotations

import json

import pytest

from devstack.processes import free_port
from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_an_unreachable_gateway_is_exit_6(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    run = cli("datasets", "list", MODELYARD_URL=url)
    as_json = cli("jobs", "list", "-O", "json", MODELYARD_URL=url)

    assert run.code == 6, run
    assert run.stdout == ""
    assert run.stderr.startswith(
        f"error: UNAVAILABLE GATEWAY_UNREACHABLE: cannot reach the gateway at {url} ("
    )
    assert run.stderr.rstrip().endswith("(is the stack up (`make up`) and MODELYARD_URL right?)")
    assert run.stderr.count("\n") == 1
    assert as_json.code == 6
    assert json.loads(as_json.stderr)["error"]["reason"] == "GATEWAY_UNREACHABLE"


def test_a_wrong_or_missing_token_is_exit_5(cli: Cli) -> None:
    wrong = cli("models", "list", MODELYARD_TOKEN="not-the-token")
    missing = cli("datasets", "show", "x", MODELYARD_TOKEN="")
    flag = cli("--token", "not-the-token", "jobs", "list", "-O", "json")

    assert wrong.code == 5, wrong
    assert wrong.stderr == (
        "error: UNAUTHENTICATED API_TOKEN_INVALID: the bearer token is not valid "
        "(check MODELYARD_TOKEN: `make up` prints the token)\n"
    )
    assert missing.code == 5, missing
    assert missing.stderr.startswith("error: UNAUTHENTICATED API_TOKEN_MISSING: ")
    assert flag.code == 5
    assert json.loads(flag.stderr)["error"]["status"] == "UNAUTHENTICATED"


def test_a_gateway_url_without_a_scheme_is_refused_before_any_call(cli: Cli) -> None:
    run = cli("datasets", "list", MODELYARD_URL="127.0.0.1:8080")

    assert run.code == 4, run
    assert run.stderr.startswith("error: INVALID_ARGUMENT GATEWAY_URL_INVALID: ")


def test_usage_errors_are_exit_2_and_help_documents_the_exit_codes(cli: Cli) -> None:
    missing = cli("train")
    unknown_task = cli("train", "d", "--target", "y", "--task", "clustering")
    unknown_output = cli("datasets", "list", "--output", "yaml")
    help_text = cli("--help")

    assert missing.code == 2
    assert "Missing argument" in missing.stderr
    assert unknown_task.code == 2
    assert unknown_output.code == 2
    assert help_text.code == 0
    assert "7 job FAILED, 8 job CANCELLED" in " ".join(help_text.stdout.split())
    assert cli("--version").stdout.startswith("modelyard ")
