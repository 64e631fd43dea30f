"""Everything the Trainer writes to MLflow, with as few HTTP calls as possible.

Every call to an MLflow server with basic auth costs a password check on the
server (tens to hundreds of milliseconds), so a job's MLflow work is a short
chain of steps whose independent calls run in parallel:

1. `open_run` (while the dataset is read and the model trains): the run, with
   tags linking it to the job and dataset, and its LoggedModel.
2. `publish` after training, in parallel: parameters + final metrics + the
   per-iteration validation curve (log_batch, with the final metrics linked to
   the model), the dataset as a run input (with its sha256), the feature
   importance JSON and PNG, the model files (pyfunc "model from code": the
   booster, the preprocessing spec, signature and input example) uploaded
   file by file, the run → model link, and a read of the current champion.
3. Then: the LoggedModel marked READY, the model version registered (tag
   `job_id`), the run ended, and `champion` moved when the new version is
   strictly better (under a lock shared by every Trainer, see `ChampionLock`).

Blocking: call from a worker thread, never from the event loop. Each step is
timed (`MlflowTimings`) so that logs and benchmarks can say where time goes.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset as MlflowDataset
from mlflow.entities import (
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
)
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.models import Model
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from opentelemetry.trace import SpanKind

from runtime import limits
from runtime.logs import error_fields
from runtime.tracing import tracer
from services.training import pyfunc_model
from services.training.champion import (
    CHAMPION_ALIAS,
    METRIC_TAG_PREFIX,
    ChampionLock,
    LocalChampionLock,
    beats_champion,
    version_metrics,
)
from services.training.params import as_strings
from services.training.pipeline import TrainingResult
from services.training.run_content import curve_steps, importance_chart, model_signature
from services.training.targets import PRIMARY_METRICS, PrimaryMetric, Task

logger = logging.getLogger("modelyard.trainer.mlflow")

MODEL_ARTIFACT_NAME = "model"
JOB_TAG = "job_id"
JOB_RESULT_ARTIFACT = "job_result.json"
# Registered models the Trainer manages carry this tag; ListModels shows only them.
MANAGED_TAG = "managed_by"
MANAGED_VALUE = "modelyard"
PYFUNC_CODE_PATH = Path(pyfunc_model.__file__)
_UPLOAD_THREADS = 6
# MLflow limits one log_batch call to 1000 metrics, 1000 entities in all.
_METRICS_PER_CALL = 1000
_ENTITIES_PER_CALL = 1000
# Longest run tag value MLflow stores.
_TAG_VALUE_LIMIT = 8000
JOB_RESULT_TAG = "modelyard.job_result"


class MlflowUnavailable(Exception):
    """An MLflow call failed; the job can be tried again later."""


class MlflowTimings:
    """Seconds spent and calls made per kind of MLflow step, summed (thread-safe).

    Steps run in parallel overlap: their seconds add up to more than the wall time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with tracer().start_as_current_span(f"mlflow {name}", kind=SpanKind.CLIENT):
                yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._seconds[name] = self._seconds.get(name, 0.0) + elapsed
                self._calls[name] = self._calls.get(name, 0) + 1

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {name: round(seconds, 4) for name, seconds in self._seconds.items()}

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)


@dataclass(frozen=True)
class JobInfo:
    """What MLflow records about a job and its dataset."""

    job_id: str
    attempt: int
    dataset_id: str
    dataset_name: str
    dataset_sha256: str
    dataset_rows: int
    target_column: str
    requested_task: str
    model_name: str


@dataclass(frozen=True)
class RunRef:
    experiment_id: str
    run_id: str
    run_url: str
    artifact_uri: str
    model_id: str
    model_artifact_location: str


@dataclass(frozen=True)
class PublishedModel:
    model_name: str
    version: int
    model_uri: str
    promoted_to_champion: bool
    champion_note: str


@dataclass(frozen=True)
class RecoveredJob:
    """What an earlier attempt of a job registered before its Trainer stopped."""

    run: RunRef
    published: PublishedModel
    # The Succeeded event it would have published (JSON), without its MLflow part.
    job_result: str


@dataclass
class _Uploads:
    futures: list[Future[Any]] = field(default_factory=list)

    def wait(self) -> None:
        for future in self.futures:
            future.result()


def derive_model_name(dataset_name: str, target: str) -> str:
    """`<dataset>-<target>`, lower case, safe in URLs and MLflow model URIs."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{dataset_name}-{target}".lower()).strip("-")
    return (slug or "model")[: limits.MAX_MODEL_NAME_CHARS].rstrip("-")


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class Tracker:
    """The Trainer's MLflow client: one per process, shared by its job threads."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        ui_url: str,
        model_description: str,
        work_dir: Path,
        champion_lock: ChampionLock | None = None,
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._ui_url = ui_url
        self._description = model_description
        self._work_dir = work_dir
        self._champion_lock = champion_lock or LocalChampionLock()
        self._experiment_id: str | None = None
        self._known_models: set[str] = set()
        self._pool = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="mlflow")
        self._requirements = [
            f"mlflow=={mlflow.__version__}",
            f"lightgbm=={lgb.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ]

    def set_champion_lock(self, lock: ChampionLock) -> None:
        self._champion_lock = lock

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- runs ----------------------------------------------------------------------

    def experiment_id(self, timings: MlflowTimings) -> str:
        if self._experiment_id is None:
            with self._calls(timings, "experiment"):
                found = self.client.get_experiment_by_name(self._experiment_name)
                if found is None:
                    try:
                        self._experiment_id = self.client.create_experiment(self._experiment_name)
                    except MlflowException as error:  # another Trainer created it meanwhile
                        if error.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                        found = self.client.get_experiment_by_name(self._experiment_name)
                        assert found is not None
                        self._experiment_id = str(found.experiment_id)
                else:
                    self._experiment_id = str(found.experiment_id)
        return self._experiment_id

    def open_run(self, job: JobInfo, timings: MlflowTimings) -> RunRef:
        """The job's run, tagged with job and dataset, and the LoggedModel it will log."""
        experiment_id = self.experiment_id(timings)
        tags = {
            "modelyard.job_id": job.job_id,
            "modelyard.attempt": str(job.attempt),
            "modelyard.dataset_id": job.dataset_id,
            "modelyard.dataset_sha256": job.dataset_sha256,
            "modelyard.target_column": job.target_column,
            "modelyard.requested_task": job.requested_task,
            "modelyard.registered_model_name": job.model_name,
            "mlflow.source.name": "modelyard-trainer",
            "mlflow.source.type": "JOB",
        }
        with self._calls(timings, "create_run"):
            run = self.client.create_run(
                experiment_id, tags=tags, run_name=f"{job.job_id}-attempt-{job.attempt}"
            )
        with self._calls(timings, "create_logged_model"):
            logged = self.client.create_logged_model(
                experiment_id,
                name=MODEL_ARTIFACT_NAME,
                source_run_id=run.info.run_id,
                tags={"modelyard.job_id": job.job_id},
                model_type="lightgbm",
            )
        return RunRef(
            experiment_id=experiment_id,
            run_id=run.info.run_id,
            run_url=run_url(self._ui_url, experiment_id, run.info.run_id),
            artifact_uri=run.info.artifact_uri,
            model_id=logged.model_id,
            model_artifact_location=logged.artifact_location,
        )

    def end_run(self, run: RunRef, status: str, timings: MlflowTimings, why: str = "") -> None:
        """Close a run that did not produce a model (FAILED or KILLED); never raises."""
        try:
            with self._calls(timings, "end_run"):
                futures: list[Future[Any]] = [
                    self._pool.submit(self.client.set_terminated, run.run_id, status),
                    self._pool.submit(
                        self.client.finalize_logged_model, run.model_id, LoggedModelStatus.FAILED
                    ),
                ]
                if why:
                    futures.append(
                        self._pool.submit(self.client.set_tag, run.run_id, "modelyard.outcome", why)
                    )
                for future in futures:
                    future.result()
        except (MlflowUnavailable, MlflowException, OSError) as error:
            logger.warning("could not close MLflow run", extra=error_fields(error))

    def record_timings(self, run_id: str, timings: Mapping[str, float]) -> None:
        """Best effort, after the job's outcome is published."""
        try:
            self.client.set_tag(run_id, "modelyard.mlflow_seconds", json.dumps(dict(timings)))
        except (MlflowException, OSError) as error:
            logger.warning("could not record MLflow timings", extra=error_fields(error))

    # -- publishing a trained model --------------------------------------------------

    def publish(
        self,
        run: RunRef,
        job: JobInfo,
        result: TrainingResult,
        timings: MlflowTimings,
        job_result: str = "{}",
    ) -> PublishedModel:
        """Log everything about a trained model, register it, and decide `champion`."""
        with (
            tempfile.TemporaryDirectory(dir=self._ensure_work_dir()) as scratch,
            self._champion_lock.hold(job.model_name),
        ):
            root = Path(scratch)
            # 1. Every call that depends on nothing else, at once.
            champion = self._submit(
                timings, "read_champion", self._champion_version, job.model_name
            )
            earlier = (
                self._submit(
                    timings, "find_job_version", self.find_job_version, job.model_name, job.job_id
                )
                if job.attempt > 1
                else None
            )
            ensured = self._submit(
                timings, "ensure_registered_model", self._ensure_model, job.model_name
            )
            uploads = self._log_run_data(run, job, result, root, timings, job_result)
            with self._calls(timings, "save_model_locally"):
                model_dir = self._save_model(run, result, root / MODEL_ARTIFACT_NAME)
            uploads.futures += self._upload_dir(model_dir, run.model_artifact_location, timings)
            uploads.wait()
            ensured.result()
            # 2. The model is complete: mark it READY, end the run, register the version.
            finalized = self._submit(
                timings,
                "finalize_logged_model",
                self.client.finalize_logged_model,
                run.model_id,
                LoggedModelStatus.READY,
            )
            ended = self._submit(
                timings, "end_run", self.client.set_terminated, run.run_id, "FINISHED"
            )
            version = (earlier.result() if earlier else None) or self._register(
                run, job, result, timings
            )
            # 3. The champion, read while this lock was held, against the new version.
            promoted, note = self._maybe_promote(
                job.model_name,
                version,
                result.metrics,
                result.primary_metric,
                champion.result(),
                timings,
            )
            finalized.result()
            ended.result()
        return PublishedModel(
            model_name=job.model_name,
            version=int(version.version),
            model_uri=f"models:/{job.model_name}/{version.version}",
            promoted_to_champion=promoted,
            champion_note=note,
        )

    def _log_run_data(
        self,
        run: RunRef,
        job: JobInfo,
        result: TrainingResult,
        root: Path,
        timings: MlflowTimings,
        job_result: str,
    ) -> _Uploads:
        """Params, metrics, curve, dataset, model link, importance, and the job's result
        (a run tag when it fits, else an artifact), all at once."""
        uploads = _Uploads()
        submit = uploads.futures.append
        fits = len(job_result) <= _TAG_VALUE_LIMIT
        extra_tags = {JOB_RESULT_TAG: job_result} if fits else {}
        for batch in self._run_batches(run, result, extra_tags):
            submit(
                self._submit(
                    timings, "log_params_metrics", self.client.log_batch, run.run_id, **batch
                )
            )
        submit(
            self._submit(
                timings,
                "log_dataset_input",
                self.client.log_inputs,
                run.run_id,
                [self._dataset_input(job)],
            )
        )
        submit(
            self._submit(
                timings,
                "link_model_output",
                self.client.log_outputs,
                run.run_id,
                [LoggedModelOutput(run.model_id, step=0)],
            )
        )
        run_files = root / "run"
        run_files.mkdir()
        (run_files / "feature_importance.json").write_text(
            json.dumps({"importance_type": "gain", "features": result.importance}, indent=2)
        )
        importance_chart(result.importance, run_files / "feature_importance.png")
        if not fits:
            (run_files / JOB_RESULT_ARTIFACT).write_text(job_result)
        uploads.futures += self._upload_dir(run_files, run.artifact_uri, timings)
        return uploads

    def _run_batches(
        self, run: RunRef, result: TrainingResult, extra_tags: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        now = int(time.time() * 1000)
        params = [Param(key, value) for key, value in as_strings(result.effective_params).items()]
        params += [
            Param("target_column", result.spec["target_column"]),
            Param("task", result.decision.task.value),
            Param("features", str(len(result.features))),
        ]
        final = [
            Metric(name, value, now, 0, model_id=run.model_id)
            for name, value in result.metrics.items()
        ]
        final += [
            Metric("best_iteration", float(result.best_iteration), now, 0, model_id=run.model_id)
        ]
        curve = [
            Metric(f"validation_{name}", values[step - 1], now, step, model_id=None)
            for name, values in result.curve.items()
            for step in curve_steps(len(values), result.best_iteration)
            if math.isfinite(values[step - 1])
        ]
        tags = [
            RunTag("modelyard.task", result.decision.task.value),
            RunTag("modelyard.task_reason", result.decision.reason),
            RunTag("modelyard.rows_used", str(result.rows_used)),
            RunTag(
                "modelyard.rows_dropped_missing_target", str(result.rows_dropped_missing_target)
            ),
            RunTag("modelyard.validation_rows", str(result.validation_rows)),
            RunTag(
                "modelyard.dropped_columns",
                json.dumps(dict(result.dropped_columns))[:5000],
            ),
        ]
        tags += [RunTag(key, value) for key, value in extra_tags.items()]
        # As much as fits in one call; the rest of the curve in parallel calls.
        room = min(_METRICS_PER_CALL, _ENTITIES_PER_CALL - len(params) - len(tags)) - len(final)
        first = {"metrics": final + curve[:room], "params": params, "tags": tags}
        rest = curve[room:]
        return [first] + [
            {"metrics": rest[start : start + _METRICS_PER_CALL]}
            for start in range(0, len(rest), _METRICS_PER_CALL)
        ]

    def _dataset_input(self, job: JobInfo) -> DatasetInput:
        dataset = MlflowDataset(
            name=job.dataset_name[:500] or job.dataset_id,
            # MLflow keeps at most 36 characters of digest; the full sha256 is in the profile.
            digest=job.dataset_sha256[:36],
            source_type="modelyard",
            source=json.dumps({"dataset_id": job.dataset_id}),
            profile=json.dumps({"sha256": job.dataset_sha256, "num_rows": job.dataset_rows}),
        )
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])

    def _save_model(self, run: RunRef, result: TrainingResult, path: Path) -> Path:
        artifacts_dir = path.parent / "model-artifacts"
        artifacts_dir.mkdir()
        booster_path = artifacts_dir / "model.txt"
        result.booster.save_model(str(booster_path), num_iteration=result.best_iteration)
        spec_path = artifacts_dir / "preprocessing.json"
        spec_path.write_text(json.dumps(result.spec))
        mlflow_model = Model(
            artifact_path=run.model_artifact_location,
            run_id=run.run_id,
            model_id=run.model_id,
            model_uuid=run.model_id,
        )
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(PYFUNC_CODE_PATH),
            artifacts={
                pyfunc_model.BOOSTER_ARTIFACT: str(booster_path),
                pyfunc_model.PREPROCESSING_ARTIFACT: str(spec_path),
            },
            signature=model_signature(result),
            input_example=result.input_example,
            pip_requirements=self._requirements,
            mlflow_model=mlflow_model,
        )
        return path

    def _upload_dir(
        self, local_dir: Path, artifact_uri: str, timings: MlflowTimings
    ) -> list[Future[Any]]:
        """One PUT per file, several at a time."""
        repository = get_artifact_repository(artifact_uri, tracking_uri=self._tracking_uri)
        uploads = []
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            if "__pycache__" in file.parts:
                continue
            parent = file.parent.relative_to(local_dir).as_posix()
            uploads.append(
                self._submit(
                    timings,
                    "upload_artifacts",
                    repository.log_artifact,
                    str(file),
                    None if parent == "." else parent,
                )
            )
        return uploads

    # -- registry ---------------------------------------------------------------------

    def _ensure_model(self, name: str) -> None:
        if name in self._known_models:
            return
        try:
            self.client.create_registered_model(
                name, description=self._description, tags={MANAGED_TAG: MANAGED_VALUE}
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self.client.set_registered_model_tag(name, MANAGED_TAG, MANAGED_VALUE)
        self._known_models.add(name)

    def find_job_version(self, model_name: str, job_id: str) -> ModelVersion | None:
        """The version an earlier attempt of this job registered, if any."""
        try:
            found = self.client.search_model_versions(
                f"name = '{model_name}' and tags.{JOB_TAG} = '{job_id}'"
            )
        except RestException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return min(found, key=lambda version: int(version.version)) if found else None

    def _register(
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
        with self._calls(timings, "register_version"):
            return self.client.create_model_version(
                job.model_name,
                source=f"models:/{run.model_id}",
                run_id=run.run_id,
                tags=tags,
                description=description,
                await_creation_for=0,
                model_id=run.model_id,
            )

    def recover_job(self, job: JobInfo, timings: MlflowTimings) -> RecoveredJob | None:
        """The model an earlier attempt of `job` registered, with `champion` settled again."""
        with self._calls(timings, "find_job_version"):
            version = self.find_job_version(job.model_name, job.job_id)
        if version is None or not version.run_id:
            self._close_abandoned_runs(job, timings)
            return None
        with (
            self._calls(timings, "recover_job_result"),
            tempfile.TemporaryDirectory(dir=self._ensure_work_dir()) as scratch,
        ):
            run = self.client.get_run(version.run_id)
            job_result = run.data.tags.get(JOB_RESULT_TAG)
            if job_result is None:
                path = self.client.download_artifacts(version.run_id, JOB_RESULT_ARTIFACT, scratch)
                job_result = Path(path).read_text()
            if run.info.status == "RUNNING":
                self.client.set_terminated(version.run_id, "FINISHED")
        task = Task((version.tags or {}).get("task", Task.REGRESSION.value))
        with self._champion_lock.hold(job.model_name):
            with self._calls(timings, "read_champion"):
                champion = self._champion_version(job.model_name)
            promoted, note = self._maybe_promote(
                job.model_name,
                version,
                version_metrics(version),
                PRIMARY_METRICS[task],
                champion,
                timings,
            )
        experiment_id = str(run.info.experiment_id)
        return RecoveredJob(
            run=RunRef(
                experiment_id=experiment_id,
                run_id=version.run_id,
                run_url=run_url(self._ui_url, experiment_id, version.run_id),
                artifact_uri=run.info.artifact_uri,
                model_id=version.model_id or "",
                model_artifact_location="",
            ),
            published=PublishedModel(
                model_name=job.model_name,
                version=int(version.version),
                model_uri=f"models:/{job.model_name}/{version.version}",
                promoted_to_champion=promoted,
                champion_note=note,
            ),
            job_result=job_result,
        )

    def _close_abandoned_runs(self, job: JobInfo, timings: MlflowTimings) -> None:
        """Runs of earlier attempts left RUNNING by a Trainer that died: KILLED."""
        with self._calls(timings, "close_abandoned_runs"):
            abandoned = self.client.search_runs(
                [self.experiment_id(timings)],
                f"tags.`modelyard.job_id` = '{job.job_id}' and attributes.status = 'RUNNING'",
            )
            for run in abandoned:
                self.client.set_tag(
                    run.info.run_id, "modelyard.outcome", "abandoned: its Trainer stopped"
                )
                self.client.set_terminated(run.info.run_id, "KILLED")

    def _champion_version(self, model_name: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def _maybe_promote(
        self,
        model_name: str,
        version: ModelVersion,
        metrics: Mapping[str, float],
        primary: PrimaryMetric,
        champion: ModelVersion | None,
        timings: MlflowTimings,
    ) -> tuple[bool, str]:
        if champion is not None and champion.version == version.version:
            return True, "already the champion"
        promote, note = beats_champion(
            metrics, version_metrics(champion) if champion is not None else None, primary
        )
        if promote:
            with self._calls(timings, "set_champion_alias"):
                self.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
        logger.info(
            "champion decision",
            extra={
                "model": model_name,
                "version": version.version,
                "promoted": promote,
                "why": note,
            },
        )
        return promote, note

    # -- plumbing -----------------------------------------------------------------------

    def _ensure_work_dir(self) -> Path:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir

    def _submit(
        self, timings: MlflowTimings, step: str, call: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Future[Any]:
        def timed() -> Any:
            with self._calls(timings, step):
                return call(*args, **kwargs)

        # The caller's context goes along: log ids, and the job's trace for the step's span.
        return self._pool.submit(contextvars.copy_context().run, timed)

    @contextlib.contextmanager
    def _calls(self, timings: MlflowTimings, step: str) -> Iterator[None]:
        """Time a step; turn any failure to reach or use MLflow into MlflowUnavailable."""
        with timings.step(step):
            try:
                yield
            except MlflowUnavailable:
                raise
            except (MlflowException, OSError) as error:
                raise MlflowUnavailable(f"MLflow {step} failed: {error}") from error
