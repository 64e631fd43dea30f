"""The MLflow Model Registry as the Trainer writes it: registered models it manages,
one version per successful job, and the `champion` alias.

A version is tagged with its job, dataset, task, target and every validation
metric (`metric.<name>`), so that the champion decision, ListModels and a
redelivered job can all read it back without the run. The champion is read,
compared and moved under the `ChampionLock` (see `champion.py`); the decision and
the `PublishedModel` it yields are made in one place, `settle_champion`, for a
job trained now and for one recovered from an earlier attempt alike.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

from runtime import limits
from services.training.fit.pipeline import TrainingResult
from services.training.model.targets import PrimaryMetric
from services.training.tracking.calls import MlflowCalls, MlflowTimings
from services.training.tracking.champion import (
    CHAMPION_ALIAS,
    METRIC_TAG_PREFIX,
    ChampionLock,
    LocalChampionLock,
    beats_champion,
    version_metrics,
)
from services.training.tracking.records import JobInfo, PublishedModel, RunRef
from services.training.tracking.same_rows import ChampionOnSameRows

logger = logging.getLogger("modelyard.trainer.mlflow")

JOB_TAG = "job_id"
# How the champion decision for a version was made, and the decision in words.
CHAMPION_RULE_TAG = "champion_rule"
CHAMPION_DECISION_TAG = "champion_decision"
RULE_SAME_ROWS = "same_validation_rows"
RULE_STORED_METRICS = "stored_metrics"
RULE_NO_CHAMPION = "no_champion"
# Registered models the Trainer manages carry this tag; ListModels shows only them.
MANAGED_TAG = "managed_by"
MANAGED_VALUE = "modelyard"
# MLflow answers a user without a grant (the Trainer's, on a model not made yet or made by
# someone else) PERMISSION_DENIED rather than telling whether the model exists. A read
# takes either as "no such model"; `ensure_model`, which runs for every job, is what
# refuses another user's model (MLFLOW_PERMISSION_DENIED).
ABSENT_FOR_THE_TRAINER = ("RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED")


def derive_model_name(
    dataset_name: str, target: str, max_chars: int = limits.MAX_MODEL_NAME_CHARS
) -> str:
    """`<dataset>-<target>`, lower case, safe in URLs and MLflow model URIs, cut to
    `max_chars` (the room a project's prefix leaves: limits.max_model_name_chars)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{dataset_name}-{target}".lower()).strip("-")
    return (slug or "model")[:max_chars].rstrip("-")


class Registry:
    def __init__(
        self, mlflow: MlflowCalls, description: str, champion_lock: ChampionLock | None = None
    ) -> None:
        self._mlflow = mlflow
        self._client = mlflow.client
        self._description = description
        self._champion_lock = champion_lock or LocalChampionLock()
        self._known_models: set[str] = set()

    def set_champion_lock(self, lock: ChampionLock) -> None:
        self._champion_lock = lock

    def holding_champion(self, model_name: str) -> contextlib.AbstractContextManager[None]:
        """Held while the champion of `model_name` is read, compared and moved."""
        return self._champion_lock.hold(model_name)

    # -- models and versions ------------------------------------------------------------

    def ensure_model(self, name: str) -> None:
        if name in self._known_models:
            return
        try:
            self._client.create_registered_model(
                name, description=self._description, tags={MANAGED_TAG: MANAGED_VALUE}
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self._client.set_registered_model_tag(name, MANAGED_TAG, MANAGED_VALUE)
        self._known_models.add(name)

    def find_job_version(self, model_name: str, job_id: str) -> ModelVersion | None:
        """The version an earlier attempt of this job registered, if any."""
        try:
            found = self._client.search_model_versions(
                f"name = '{model_name}' and tags.{JOB_TAG} = '{job_id}'"
            )
        except RestException as error:
            if error.error_code in ABSENT_FOR_THE_TRAINER:
                return None
            raise
        return min(found, key=lambda version: int(version.version)) if found else None

    def register(
        self, run: RunRef, job: JobInfo, result: TrainingResult, timings: MlflowTimings
    ) -> ModelVersion:
        primary = result.primary_metric
        tags = {
            JOB_TAG: job.job_id,
            "attempt": str(job.attempt),
            "dataset_id": job.dataset_id,
            "task": result.decision.task.value,
            "target_column": result.spec["target_column"],
            "primary_metric": primary.name,
        }
        tags |= {
            f"{METRIC_TAG_PREFIX}{name}": repr(value) for name, value in result.metrics.items()
        }
        description = (
            f"{primary.name} {result.metrics[primary.name]:.6g} on {result.validation_rows} "
            f"validation rows; job {job.job_id}, dataset {job.dataset_id}"
        )
        with self._mlflow.step(timings, "register_version"):
            return self._client.create_model_version(
                job.model_name,
                source=f"models:/{run.model_id}",
                run_id=run.run_id,
                tags=tags,
                description=description,
                await_creation_for=0,
                model_id=run.model_id,
            )

    # -- the champion -----------------------------------------------------------------

    def champion_version(self, model_name: str) -> ModelVersion | None:
        try:
            return self._client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException as error:
            if error.error_code in (*ABSENT_FOR_THE_TRAINER, "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def settle_champion(
        self,
        model_name: str,
        version: ModelVersion,
        metrics: Mapping[str, float],
        primary: PrimaryMetric,
        champion: ModelVersion | None,
        timings: MlflowTimings,
        same_rows: ChampionOnSameRows | None = None,
    ) -> PublishedModel:
        """Move `champion` to `version` when it beats `champion` (read under the lock, which
        the caller holds), and say what was decided, on the version too (tags)."""
        promoted, note, rule = self._decide(version, metrics, primary, champion, same_rows)
        if promoted and (champion is None or champion.version != version.version):
            with self._mlflow.step(timings, "set_champion_alias"):
                self._client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
        if rule:
            with self._mlflow.step(timings, "tag_champion_decision"):
                for key, value in ((CHAMPION_RULE_TAG, rule), (CHAMPION_DECISION_TAG, note)):
                    self._client.set_model_version_tag(model_name, version.version, key, value)
        logger.info(
            "champion decision",
            extra={
                "model": model_name,
                "version": version.version,
                "promoted": promoted,
                "rule": rule,
                "why": note,
            },
        )
        return PublishedModel.of(model_name, int(version.version), promoted, note)

    @staticmethod
    def _decide(
        version: ModelVersion,
        metrics: Mapping[str, float],
        primary: PrimaryMetric,
        champion: ModelVersion | None,
        same_rows: ChampionOnSameRows | None,
    ) -> tuple[bool, str, str]:
        """(promoted, why in words, the rule applied; empty when nothing was decided)."""
        if champion is None:
            return True, "no champion yet", RULE_NO_CHAMPION
        if champion.version == version.version:
            return True, "already the champion", ""
        if same_rows is not None and same_rows.metrics is not None:
            ours = same_rows.candidate_metrics or metrics
            promoted, note = beats_champion(ours, same_rows.metrics, primary)
            where = (
                f"on this job's {same_rows.rows} validation rows, "
                f"against version {champion.version}"
            )
            return promoted, f"{where}: {note}", RULE_SAME_ROWS
        promoted, note = beats_champion(metrics, version_metrics(champion), primary)
        why_not = (
            same_rows.why_not
            if same_rows is not None
            else "a job recovered from an earlier attempt"
        )
        where = (
            f"on each version's own validation rows, against version {champion.version} ({why_not})"
        )
        return promoted, f"{where}: {note}", RULE_STORED_METRICS
