"""A job's run in MLflow and everything logged to it, with as few HTTP calls as
possible; `Tracker` is what the rest of the Trainer calls.

Every call to an MLflow server with basic auth costs a password check on the
server (tens to hundreds of milliseconds), so a job's MLflow work is a short
chain of steps whose independent calls run in parallel (`calls.py`):

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
   strictly better (under a lock shared by every Trainer, see `ChampionLock`):
   `registry.py`. A redelivered job may instead be recovered: `recovery.py`.

Blocking: call from a worker thread, never from the event loop.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
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
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from runtime.access import DEFAULT_PROJECT
from runtime.logs import error_fields
from services.training.fit.pipeline import TrainingResult
from services.training.fit.search import SearchOutcome, TrialRecord
from services.training.model import pyfunc_model
from services.training.model.params import as_strings
from services.training.tracking import projects
from services.training.tracking.calls import MlflowCalls, MlflowTimings, MlflowUnavailable
from services.training.tracking.champion import ChampionLock
from services.training.tracking.records import JobInfo, PublishedModel, RecoveredJob, RunRef
from services.training.tracking.recovery import JOB_RESULT_ARTIFACT, JOB_RESULT_TAG, Recovery
from services.training.tracking.registry import Registry
from services.training.tracking.report_charts import write_report
from services.training.tracking.run_content import curve_steps, importance_chart, model_signature
from services.training.tracking.same_rows import score_champion
from services.training.tracking.trials import log_trial, write_leaderboard

logger = logging.getLogger("modelyard.trainer.mlflow")

MODEL_ARTIFACT_NAME = "model"
PYFUNC_CODE_PATH = Path(pyfunc_model.__file__)
# MLflow limits one log_batch call to 1000 metrics, 1000 entities in all.
_METRICS_PER_CALL = 1000
_ENTITIES_PER_CALL = 1000
# Longest run tag value MLflow stores.
_TAG_VALUE_LIMIT = 8000


@dataclass
class _Uploads:
    futures: list[Future[Any]] = field(default_factory=list)

    def wait(self) -> None:
        for future in self.futures:
            future.result()


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
        self._mlflow = MlflowCalls(tracking_uri)
        self.client = self._mlflow.client
        self.registry = Registry(self._mlflow, model_description, champion_lock)
        self._recovery = Recovery(self._mlflow, self.registry, ui_url, work_dir)
        self._experiment_name = experiment_name
        self._ui_url = ui_url
        self._work_dir = work_dir
        # Experiment id per project (tracking/projects.py: one experiment each).
        self._experiment_ids: dict[str, str] = {}
        self._requirements = [
            f"mlflow=={mlflow.__version__}",
            f"lightgbm=={lgb.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ]

    def set_champion_lock(self, lock: ChampionLock) -> None:
        self.registry.set_champion_lock(lock)

    def close(self) -> None:
        self._mlflow.close()

    # -- runs ----------------------------------------------------------------------

    def experiment_id(self, timings: MlflowTimings, project: str = DEFAULT_PROJECT) -> str:
        """The id of `project`'s experiment, created when it is the first job there."""
        known = self._experiment_ids.get(project)
        if known is not None:
            return known
        name = projects.experiment_name(self._experiment_name, project)
        with self._mlflow.step(timings, "experiment"):
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    experiment_id = str(self.client.create_experiment(name))
                except MlflowException as error:  # another Trainer created it meanwhile
                    if error.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    found = self.client.get_experiment_by_name(name)
                    assert found is not None
                    experiment_id = str(found.experiment_id)
            else:
                experiment_id = str(found.experiment_id)
        self._experiment_ids[project] = experiment_id
        return experiment_id

    def open_run(self, job: JobInfo, timings: MlflowTimings) -> RunRef:
        """The job's run, tagged with job and dataset, and the LoggedModel it will log."""
        experiment_id = self.experiment_id(timings, job.project)
        tags = {
            "modelyard.job_id": job.job_id,
            "modelyard.attempt": str(job.attempt),
            "modelyard.dataset_id": job.dataset_id,
            "modelyard.dataset_name": job.dataset_name[:5000],
            "modelyard.dataset_version": str(job.dataset_version),
            "modelyard.dataset_sha256": job.dataset_sha256,
            "modelyard.target_column": job.target_column,
            "modelyard.requested_task": job.requested_task,
            "modelyard.registered_model_name": job.model_name,
            "mlflow.source.name": "modelyard-trainer",
            "mlflow.source.type": "JOB",
        }
        with self._mlflow.step(timings, "create_run"):
            run = self.client.create_run(
                experiment_id, tags=tags, run_name=f"{job.job_id}-attempt-{job.attempt}"
            )
        with self._mlflow.step(timings, "create_logged_model"):
            logged = self.client.create_logged_model(
                experiment_id,
                name=MODEL_ARTIFACT_NAME,
                source_run_id=run.info.run_id,
                tags={"modelyard.job_id": job.job_id},
                model_type="lightgbm",
            )
        return RunRef.of(
            self._ui_url,
            experiment_id,
            run.info.run_id,
            run.info.artifact_uri,
            logged.model_id,
            logged.artifact_location,
        )

    def end_run(self, run: RunRef, status: str, timings: MlflowTimings, why: str = "") -> None:
        """Close a run that did not produce a model (FAILED or KILLED); never raises."""
        try:
            with self._mlflow.step(timings, "end_run"):
                futures: list[Future[Any]] = [
                    self._mlflow.submit_untimed(self.client.set_terminated, run.run_id, status),
                    self._mlflow.submit_untimed(
                        self.client.finalize_logged_model, run.model_id, LoggedModelStatus.FAILED
                    ),
                ]
                if why:
                    futures.append(
                        self._mlflow.submit_untimed(
                            self.client.set_tag, run.run_id, "modelyard.outcome", why
                        )
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
        """Log everything about a trained model, register it, and decide `champion`.

        Only the last step holds the champion lock: held from the first MLflow call to
        the last, a Trainer publishing one small job after another kept it nearly all
        the time, and another Trainer's job waited 25 s for it in a fault-test burst."""
        with tempfile.TemporaryDirectory(dir=self._ensure_work_dir()) as scratch:
            root = Path(scratch)
            # 1. Every call that depends on nothing else, at once.
            earlier = (
                self._mlflow.submit(
                    timings,
                    "find_job_version",
                    self.registry.find_job_version,
                    job.model_name,
                    job.job_id,
                )
                if job.attempt > 1
                else None
            )
            ensured = self._mlflow.submit(
                timings, "ensure_registered_model", self.registry.ensure_model, job.model_name
            )
            uploads = self._log_run_data(run, job, result, root, timings, job_result)
            with self._mlflow.step(timings, "save_model_locally"):
                model_dir = self._save_model(run, result, root / MODEL_ARTIFACT_NAME)
            uploads.futures += self._upload_dir(model_dir, run.model_artifact_location, timings)
            uploads.wait()
            ensured.result()
            # 2. The model is complete: mark it READY, end the run, register the version.
            finalized = self._mlflow.submit(
                timings,
                "finalize_logged_model",
                self.client.finalize_logged_model,
                run.model_id,
                LoggedModelStatus.READY,
            )
            ended = self._mlflow.submit(
                timings, "end_run", self.client.set_terminated, run.run_id, "FINISHED"
            )
            version = (earlier.result() if earlier else None) or self.registry.register(
                run, job, result, timings
            )
            # 3. The champion, read under the lock, against the new version, both scored on
            # this job's validation rows when the champion's features fit them.
            with self.registry.holding_champion(job.model_name):
                with self._mlflow.step(timings, "read_champion"):
                    current = self.registry.champion_version(job.model_name)
                same_rows = None
                if current is not None and current.version != version.version:
                    with self._mlflow.step(timings, "score_champion"):
                        same_rows = score_champion(job.model_name, current, result)
                published = self.registry.settle_champion(
                    job.model_name,
                    version,
                    result.metrics,
                    result.primary_metric,
                    current,
                    timings,
                    same_rows,
                )
            finalized.result()
            ended.result()
        return published

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
                self._mlflow.submit(
                    timings, "log_params_metrics", self.client.log_batch, run.run_id, **batch
                )
            )
        submit(
            self._mlflow.submit(
                timings,
                "log_dataset_input",
                self.client.log_inputs,
                run.run_id,
                [self._dataset_input(job)],
            )
        )
        submit(
            self._mlflow.submit(
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
        if result.evaluation is not None:
            write_report(result.evaluation, run_files)
        if result.search is not None:
            write_leaderboard(result.search, result.primary_metric.higher_is_better, run_files)
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
            # The names the predecessor's users query (learning_rate is among the
            # effective params): the boosting rounds the model keeps, early stopping
            # included, as scikit-learn's n_estimators would say.
            Param("n_estimators", str(result.best_iteration)),
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
            RunTag("modelyard.model_sha256", result.model_sha256),
            RunTag(
                "modelyard.dropped_columns",
                json.dumps(dict(result.dropped_columns))[:5000],
            ),
        ]
        if result.search is not None:
            tags += search_tags(result.search)
        # How it was trained: the engine, and on Dask the cluster size and partitioning.
        tags += [RunTag(f"modelyard.{key}", value) for key, value in result.engine.items()]
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
        named = job.dataset_name[:480] or job.dataset_id
        dataset = MlflowDataset(
            name=f"{named}@{job.dataset_version}" if job.dataset_version else named,
            # MLflow keeps at most 36 characters of digest; the full sha256 is in the profile.
            digest=job.dataset_sha256[:36],
            source_type="modelyard",
            source=json.dumps({"dataset_id": job.dataset_id, "version": job.dataset_version}),
            profile=json.dumps({"sha256": job.dataset_sha256, "num_rows": job.dataset_rows}),
        )
        return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])

    def _save_model(self, run: RunRef, result: TrainingResult, path: Path) -> Path:
        artifacts_dir = path.parent / "model-artifacts"
        artifacts_dir.mkdir()
        booster_path = artifacts_dir / "model.txt"
        # The text the job's model_sha256 was computed from, byte for byte.
        booster_path.write_bytes(result.model_text.encode())
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
        repository = get_artifact_repository(artifact_uri, tracking_uri=self._mlflow.tracking_uri)
        uploads = []
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            if "__pycache__" in file.parts:
                continue
            parent = file.parent.relative_to(local_dir).as_posix()
            uploads.append(
                self._mlflow.submit(
                    timings,
                    "upload_artifacts",
                    repository.log_artifact,
                    str(file),
                    None if parent == "." else parent,
                )
            )
        return uploads

    # -- a search's trials ------------------------------------------------------------

    def log_trial(
        self, run: RunRef, job: JobInfo, trial: TrialRecord, then: Callable[[str], None]
    ) -> Future[None]:
        """The trial's child run, logged in the pool; `then` gets its run id ("" when
        MLflow did not take it: a trial is not worth failing the job over)."""

        def log_and_then() -> None:
            run_id = ""
            try:
                run_id = log_trial(self._mlflow, run.experiment_id, run.run_id, job.job_id, trial)
            except Exception as error:
                logger.warning("could not log a trial's MLflow run", extra=error_fields(error))
            then(run_id)

        return self._mlflow.submit_untimed(log_and_then)

    # -- a job redelivered after its model was registered ---------------------------

    def recover_job(self, job: JobInfo, timings: MlflowTimings) -> RecoveredJob | None:
        """See `recovery.py`."""
        return self._recovery.recover_job(
            job, lambda: self.experiment_id(timings, job.project), timings
        )

    # -- plumbing -----------------------------------------------------------------------

    def _ensure_work_dir(self) -> Path:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return self._work_dir


def search_tags(outcome: SearchOutcome) -> list[RunTag]:
    best = outcome.trials[outcome.best_trial]
    return [
        RunTag("modelyard.search.trials", str(len(outcome.trials))),
        RunTag("modelyard.search.best_trial", str(outcome.best_trial)),
        RunTag("modelyard.search.objective", outcome.objective),
        RunTag(
            "modelyard.search.validation",
            f"{outcome.validation} ({outcome.folds} folds x {outcome.fold_repeats})",
        ),
        RunTag("modelyard.search.stopped_by", outcome.stopped_by),
        RunTag("modelyard.search.best_metric", f"{best.metric_name}={best.metric_value:.6g}"),
        RunTag("modelyard.search.metric_std", json.dumps(outcome.metric_std)[:5000]),
    ]
