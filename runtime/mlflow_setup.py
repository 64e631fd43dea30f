"""The MLflow setup step: the Trainer's own MLflow user, made by the admin.

The MLflow admin password is used here and nowhere else. Setup creates the
Trainer's user (or sets its password again, so a rotated secret takes effect),
makes the experiment the Trainer writes to and grants the user MANAGE on it, and
grants MANAGE on the registered models an earlier Trainer made (tagged
`managed_by=modelyard`) so an upgraded deployment keeps its models. Models the
Trainer registers from then on are its own: MLflow gives their creator MANAGE.
With `default_permission = NO_PERMISSIONS` (the auth config every modelyard
MLflow runs with) the Trainer's user can neither read nor change anything else,
nor manage users. `make up` and the test fixtures call `set_up`; compose runs it
as a one-shot service and Kubernetes as a Job:

    MODELYARD_MLFLOW_SETUP_TRACKING_URI=http://mlflow:5000 \\
    MODELYARD_MLFLOW_SETUP_ADMIN_PASSWORD=... MODELYARD_MLFLOW_SETUP_TRAINER_PASSWORD=... \\
    python -m runtime.mlflow_setup

It is idempotent.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Registered models the Trainer manages carry this tag (services/training/tracking/registry.py).
MANAGED_TAG = "managed_by"
MANAGED_VALUE = "modelyard"
TRAINER_USERNAME = "modelyard-trainer"
# Every modelyard MLflow's auth config: a user sees only what it was granted or created.
DEFAULT_PERMISSION = "NO_PERMISSIONS"


class MlflowSetupError(Exception):
    """Setup could not finish; the message says which step and why."""


class MlflowSetupSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_MLFLOW_SETUP_", extra="ignore", frozen=True, populate_by_name=True
    )

    tracking_uri: str = Field(default="http://127.0.0.1:5000", description="MLflow server.")
    admin_username: str = Field(default="admin", description="MLflow's admin user.")
    admin_password: SecretStr = Field(default=SecretStr(""), description="Its password.")
    trainer_username: str = Field(
        default=TRAINER_USERNAME, description="The user the Trainer logs in as."
    )
    trainer_password: SecretStr = Field(
        default=SecretStr(""), description="Its password (the Trainer's MLFLOW_PASSWORD)."
    )
    experiment_names: list[str] = Field(
        default=["modelyard"], description="Experiments the Trainer writes to (JSON list)."
    )
    timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long to wait for MLflow to answer."
    )


@dataclass(frozen=True)
class _Admin:
    base_url: str
    authorization: str

    @classmethod
    def login(cls, tracking_uri: str, username: str, password: str) -> _Admin:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        return cls(tracking_uri.rstrip("/"), f"Basic {token}")

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one MLflow REST call; 4xx answers are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": self.authorization, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            if error.code >= 500:
                raise MlflowSetupError(f"{method} {path}: MLflow answered {error.code}") from None
            return error.code, _json(error.read())

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, answer = self.call(method, path, body)
        if status != 200:
            raise MlflowSetupError(f"{method} {path}: {status} {answer.get('error_code', '')}")
        return answer


def _json(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _wait_for_mlflow(tracking_uri: str, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5):
                return
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > deadline:
                raise MlflowSetupError(
                    f"MLflow at {tracking_uri} did not answer: {error}"
                ) from None
            time.sleep(1)


def set_up(
    tracking_uri: str,
    admin: tuple[str, str],
    trainer: tuple[str, str],
    experiment_names: list[str],
    timeout_seconds: float = 120.0,
) -> None:
    """Make the Trainer's user and grant it its experiments and models; see the module doc."""
    trainer_username, trainer_password = trainer
    if not trainer_password:
        raise MlflowSetupError("the Trainer's MLflow password is empty")
    _wait_for_mlflow(tracking_uri, timeout_seconds)
    session = _Admin.login(tracking_uri, *admin)
    _ensure_user(session, trainer_username, trainer_password)
    for name in experiment_names:
        _grant(session, trainer_username, "experiment", _ensure_experiment(session, name))
    for model_name in _managed_model_names(session):
        _grant(session, trainer_username, "registered_model", model_name)


def _ensure_user(session: _Admin, username: str, password: str) -> None:
    body = {"username": username, "password": password}
    status, answer = session.call("POST", "/api/2.0/mlflow/users/create", body)
    if status == 200:
        return
    if answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise MlflowSetupError(f"creating MLflow user {username}: {status} {answer}")
    # Setting the password again makes a rotated secret take effect.
    session.ok("PATCH", "/api/2.0/mlflow/users/update-password", body)


def _ensure_experiment(session: _Admin, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    status, answer = session.call("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")
    if status == 200:
        return str(answer["experiment"]["experiment_id"])
    status, answer = session.call("POST", "/api/2.0/mlflow/experiments/create", {"name": name})
    if status == 200:
        return str(answer["experiment_id"])
    # Made meanwhile by someone else (a Trainer started early): use it.
    found = session.ok("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")
    return str(found["experiment"]["experiment_id"])


def _managed_model_names(session: _Admin) -> list[str]:
    names: list[str] = []
    page_token = ""
    while True:
        query = {"filter": f"tags.{MANAGED_TAG} = '{MANAGED_VALUE}'", "max_results": "1000"}
        if page_token:
            query["page_token"] = page_token
        answer = session.ok(
            "GET", "/api/2.0/mlflow/registered-models/search?" + urllib.parse.urlencode(query)
        )
        names.extend(model["name"] for model in answer.get("registered_models", []))
        page_token = answer.get("next_page_token", "")
        if not page_token:
            return names


def _grant(session: _Admin, username: str, resource_type: str, resource_id: str) -> None:
    body = {
        "username": username,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "permission": "MANAGE",
    }
    status, answer = session.call("POST", "/api/3.0/mlflow/users/permissions/grant", body)
    if status == 200:
        return
    if answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise MlflowSetupError(f"granting {resource_type} {resource_id}: {status} {answer}")
    # A grant from an earlier setup, or the creator's own: make sure it is MANAGE.
    query = urllib.parse.urlencode(
        {k: body[k] for k in ("username", "resource_type", "resource_id")}
    )
    current = session.ok("GET", f"/api/3.0/mlflow/users/permissions/get?{query}")
    if current.get("permission") == "MANAGE":
        return
    session.ok("POST", "/api/3.0/mlflow/users/permissions/revoke", body)
    session.ok("POST", "/api/3.0/mlflow/users/permissions/grant", body)


def main() -> int:
    settings = MlflowSetupSettings()
    try:
        set_up(
            settings.tracking_uri,
            (settings.admin_username, settings.admin_password.get_secret_value()),
            (settings.trainer_username, settings.trainer_password.get_secret_value()),
            settings.experiment_names,
            settings.timeout_seconds,
        )
    except MlflowSetupError as error:
        print(f"mlflow setup failed: {error}", file=sys.stderr)
        return 1
    print(f"mlflow setup done: {settings.trainer_username} may use its experiments and models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
