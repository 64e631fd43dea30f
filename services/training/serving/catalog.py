"""Registered models as TrainerService shows them, and which version a Predict means.

Blocking MLflow calls: TrainerService runs these methods in threads. An alias is
resolved to its version on every call (one registry call), so a moved
`champion` takes effect at once; the model behind each version is loaded only
once (`cache.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from google.protobuf import timestamp_pb2
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from modelyard.jobs.v1 import training_job_pb2
from modelyard.training.v1 import model_pb2
from runtime import limits
from runtime.access import DEFAULT_PROJECT
from runtime.errors import (
    ServiceError,
    invalid_argument,
    not_found,
    unavailable,
)
from runtime.limits import echo
from runtime.pagination import checked_page_size
from services.training import reasons
from services.training.tracking import projects
from services.training.tracking.champion import CHAMPION_ALIAS, version_metrics
from services.training.tracking.registry import JOB_TAG, MANAGED_TAG, MANAGED_VALUE

logger = logging.getLogger("modelyard.trainer.catalog")

MAX_VERSIONS = 10_000
TASK_ENUMS = {
    "BINARY": training_job_pb2.TrainingJob.Task.BINARY,
    "MULTICLASS": training_job_pb2.TrainingJob.Task.MULTICLASS,
    "REGRESSION": training_job_pb2.TrainingJob.Task.REGRESSION,
}


@contextmanager
def mlflow_errors(model_name: str) -> Iterator[None]:
    """MLflow's errors as the contract's: unknown model NOT_FOUND, MLflow down UNAVAILABLE."""
    try:
        yield
    except ServiceError:
        raise
    except MlflowException as error:
        # A model another MLflow user made is not one of modelyard's (the Trainer's user
        # may read only its own): not found, like one that does not exist.
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED"):
            raise not_found(
                reasons.MODEL_NOT_FOUND,
                f"no registered model {model_name!r}",
                model_name=model_name,
            ) from error
        raise registry_unavailable() from error
    except OSError as error:
        raise registry_unavailable() from error


def registry_unavailable() -> ServiceError:
    return unavailable(reasons.MLFLOW_UNAVAILABLE, "the model registry did not answer")


_PAGE_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{1,1024}")


class ModelCatalog:
    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    # -- listing -----------------------------------------------------------------------

    def list_models(
        self, page_size: int, page_token: str, project: str | None = None
    ) -> tuple[list[model_pb2.Model], str]:
        """One page of `project`'s models (every project's when None), named as that
        project's callers name them; the registry keeps the list, so its tokens are
        MLflow's. The `default` project's pages leave out other projects' models after
        the search, so one of its pages may hold fewer than `page_size`."""
        size = checked_page_size(page_size)
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):
            # MLflow's tokens are base64; anything else would make its server fail (500).
            raise invalid_argument(reasons.PAGE_TOKEN_INVALID, "page_token is not valid")
        try:
            managed = f"tags.{MANAGED_TAG} = '{MANAGED_VALUE}'"
            if project is not None and project != DEFAULT_PROJECT:
                managed += f" and name LIKE '{projects.registry_name(project, '')}%'"
            page = self._client.search_registered_models(
                filter_string=managed,
                max_results=size,
                order_by=["name ASC"],
                page_token=page_token or None,
            )
        except MlflowException as error:
            if error.error_code == "INVALID_PARAMETER_VALUE" and page_token:
                raise invalid_argument(
                    reasons.PAGE_TOKEN_INVALID, "page_token is not valid"
                ) from error
            raise registry_unavailable() from error
        models = [model for model in page if projects.in_project(model.name, project)]
        versions = self._versions_of([model.name for model in models])
        listed = []
        for model in models:
            own = versions.get(model.name, [])
            champion = _champion(model)
            shown = [v for v in own[:1]] + [
                v for v in own[1:] if champion and int(v.version) == champion
            ]
            listed.append(model_proto(model, shown, project is not None))
        return listed, page.token or ""

    def get_model(self, name: str, project: str | None = None) -> model_pb2.Model:
        """`name` of `project` (None: `name` is the registry's own name)."""
        validate_model_name(name)
        registered = projects.registry_name(project, name)
        with mlflow_errors(name):
            model = self._client.get_registered_model(registered)
            versions = self._versions_of([registered]).get(registered, [])
        return model_proto(model, versions, project is not None)

    def _versions_of(self, names: list[str]) -> dict[str, list[ModelVersion]]:
        """Versions per model, newest first, in one search."""
        if not names:
            return {}
        quoted = ", ".join(
            f"'{name}'" for name in names if limits.is_model_name(projects.public_name(name))
        )
        with mlflow_errors(names[0]):
            found = self._client.search_model_versions(
                f"name IN ({quoted})", max_results=MAX_VERSIONS
            )
        by_name: dict[str, list[ModelVersion]] = {}
        for version in found:
            by_name.setdefault(version.name, []).append(version)
        for versions in by_name.values():
            versions.sort(key=lambda version: -int(version.version))
        return by_name

    # -- predicting ----------------------------------------------------------------------

    def resolve_version(self, name: str, version: int | None, alias: str | None) -> int:
        """The version number a Predict call means; NOT_FOUND names what is missing.
        `name` is the registry's (tracking/projects.py)."""
        validate_model_name(projects.public_name(name))
        try:
            if version is not None:
                found = self._client.get_model_version(name, str(version))
            else:
                found = self._client.get_model_version_by_alias(name, alias or CHAMPION_ALIAS)
        except MlflowException as error:
            if error.error_code not in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
                "PERMISSION_DENIED",
            ):
                raise registry_unavailable() from error
            with mlflow_errors(name):
                self._client.get_registered_model(name)  # NOT_FOUND MODEL_NOT_FOUND if absent
            # Which version was asked for, under the key the request used.
            asked = (
                {"version": str(version)}
                if version is not None
                else {"alias": echo(alias or CHAMPION_ALIAS)}
            )
            what = " ".join(next(iter(asked.items())))
            raise not_found(
                reasons.MODEL_VERSION_NOT_FOUND,
                f"model {name!r} has no {what}",
                model_name=name,
                **asked,
            ) from error
        return int(found.version)


def validate_model_name(name: str) -> None:
    limits.check_model_name(name, reasons.MODEL_NAME_INVALID, field="model_name")


def _champion(model: RegisteredModel) -> int:
    aliases: Any = model.aliases or {}
    if isinstance(aliases, dict):
        value = aliases.get(CHAMPION_ALIAS)
        return int(value) if value else 0
    for alias in aliases:  # older clients: a list of RegisteredModelAlias
        if alias.alias == CHAMPION_ALIAS:
            return int(alias.version)
    return 0


def _aliases_by_version(model: RegisteredModel) -> dict[int, list[str]]:
    aliases: Any = model.aliases or {}
    pairs: Iterable[tuple[str, Any]] = (
        aliases.items() if isinstance(aliases, dict) else ((a.alias, a.version) for a in aliases)
    )
    by_version: dict[int, list[str]] = {}
    for alias, version in pairs:
        by_version.setdefault(int(version), []).append(alias)
    return by_version


def model_proto(
    model: RegisteredModel, versions: list[ModelVersion], public: bool = False
) -> model_pb2.Model:
    """The model; named as its project's callers name it when `public`."""
    aliases = _aliases_by_version(model)
    return model_pb2.Model(
        name=projects.public_name(model.name) if public else model.name,
        description=model.description or "",
        versions=[
            version_proto(version, aliases.get(int(version.version), [])) for version in versions
        ],
        champion_version=_champion(model),
        latest_version=max((int(v.version) for v in versions), default=0),
        create_time=_timestamp(model.creation_timestamp),
        update_time=_timestamp(model.last_updated_timestamp),
    )


def version_proto(version: ModelVersion, aliases: list[str]) -> model_pb2.ModelVersion:
    tags = version.tags or {}
    return model_pb2.ModelVersion(
        version=int(version.version),
        aliases=sorted(aliases),
        job_id=tags.get(JOB_TAG, ""),
        dataset_id=tags.get("dataset_id", ""),
        run_id=version.run_id or "",
        task=TASK_ENUMS.get(
            tags.get("task", ""), training_job_pb2.TrainingJob.Task.TASK_UNSPECIFIED
        ),
        metrics=version_metrics(version),
        target_column=tags.get("target_column", ""),
        status=str(version.status or ""),
        model_uri=f"models:/{version.name}/{version.version}",
        create_time=_timestamp(version.creation_timestamp),
    )


def _timestamp(millis: int | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if millis:
        stamp.FromMilliseconds(int(millis))
    return stamp
