"""One attempt at one training job, from its TrainingRequest to its final JobEvent.

The event loop reads the dataset and publishes events; the CPU-bound and
blocking work (the pipeline, every MLflow call) runs in a worker thread that
checks the job's stop flag at every boosting iteration. The loop sets that
flag when the job's cancellation key appears, when its deadline passes, or on
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import psutil
from google.protobuf import json_format

from modelyard.dataset.v1 import dataset_pb2
from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import scoring_job_pb2, training_job_pb2
from runtime import access, limits
from runtime.errors import ServiceError, make_status
from runtime.logs import error_fields
from runtime.tracing import tracer
from services.training import metrics, reasons
from services.training.batch.job import score_dataset
from services.training.batch.output import DatasetWriter
from services.training.batch.scorer import ScoringOptions
from services.training.fit.dask_fit import DaskTarget, DaskUnavailable, ParquetSource, train_on_dask
from services.training.fit.dataset_reader import (
    DatasetReader,
    DatasetUnavailable,
    LoadedDataset,
    column_infos,
)
from services.training.fit.estimate import CostBook, Measurement, TableShape
from services.training.fit.pipeline import (
    PipelineConfig,
    TrainingResult,
    TrainingStopped,
    train_model,
)
from services.training.fit.search import (
    SearchOutcome,
    SearchSpec,
    SearchStatus,
    TrialRecord,
    replay_refit,
    search_model,
    typed_param,
)
from services.training.model.params import as_strings, validate_params
from services.training.model.targets import Task, TaskDecision, TrainingFailure
from services.training.serving.cache import LoadedModel, ModelCache
from services.training.settings import TrainerSettings
from services.training.tracking import projects
from services.training.tracking.calls import (
    MlflowPermissionDenied,
    MlflowTimings,
    MlflowUnavailable,
)
from services.training.tracking.records import JobInfo, PublishedModel, RunRef
from services.training.tracking.registry import derive_model_name
from services.training.tracking.runs import Tracker
from services.training.work.events import EventPublisher, EventsUnavailable

logger = logging.getLogger("modelyard.trainer.job")

T = TypeVar("T")

TASKS = {
    training_job_pb2.TrainingJob.Task.TASK_UNSPECIFIED: Task.AUTO,
    training_job_pb2.TrainingJob.Task.AUTO: Task.AUTO,
    training_job_pb2.TrainingJob.Task.BINARY: Task.BINARY,
    training_job_pb2.TrainingJob.Task.MULTICLASS: Task.MULTICLASS,
    training_job_pb2.TrainingJob.Task.REGRESSION: Task.REGRESSION,
    training_job_pb2.TrainingJob.Task.CLASSIFICATION: Task.CLASSIFICATION,
}
TASK_ENUMS = {task: number for number, task in TASKS.items() if number}


RSS_SAMPLE_SECONDS = 0.2


class Disposition(enum.Enum):
    """What to do with the request message once the attempt is over."""

    ACK = "ack"  # the final event is published
    RETRY_LATER = "retry_later"  # transient failure: deliver again after a delay
    RETRY_NOW = "retry_now"  # handed back on shutdown: another Trainer takes it
    TERMINATE = "terminate"  # refused: never delivered again


class JobControl:
    """The stop flag of a running job, set on the event loop, read by the training thread."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._flag = threading.Event()
        self._why: str | None = None
        self.stopped = asyncio.Event()

    def stop(self, why: str) -> None:
        if self._why is None:
            self._why = why
            self._flag.set()
            self.stopped.set()

    @property
    def why(self) -> str | None:
        return self._why

    def check(self) -> None:
        if self._flag.is_set():
            raise TrainingStopped(self._why or "cancelled")
        if time.monotonic() > self.deadline:
            raise TrainingStopped("deadline")


@dataclass
class _Attempt:
    request: dispatch_pb2.TrainingRequest
    attempt: int
    control: JobControl
    timings: MlflowTimings = field(default_factory=MlflowTimings)
    run: RunRef | None = None
    job: JobInfo | None = None
    progress_sent: set[asyncio.Task[None]] = field(default_factory=set)
    trials_logged: list[Future[None]] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.request.job_id


class _ThreadHooks:
    """TrainingHooks for the training thread: stop checks, throttled progress events."""

    def __init__(
        self,
        control: JobControl,
        loop: asyncio.AbstractEventLoop,
        on_progress: Callable[[training_job_pb2.TrainingProgress], None],
        on_decided: Callable[[TaskDecision], None],
        interval: float,
    ) -> None:
        self._control = control
        self._loop = loop
        self._on_progress = on_progress
        self._on_decided = on_decided
        self._interval = interval
        self._last = 0.0
        self._unsent: training_job_pb2.TrainingProgress | None = None
        self._search: tuple[int, SearchStatus] | None = None
        self._process = psutil.Process()
        self.peak_rss = self._process.memory_info().rss
        self._sampled = time.monotonic()
        self.on_trial: Callable[[TrialRecord], None] = lambda trial: None

    def check(self) -> None:
        self._control.check()
        now = time.monotonic()
        if now - self._sampled >= RSS_SAMPLE_SECONDS:  # the peak the cost book learns from
            self._sampled = now
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def decided(self, decision: TaskDecision) -> None:
        self._loop.call_soon_threadsafe(self._on_decided, decision)

    def trial_started(self, number: int, status: SearchStatus) -> None:
        self._search = (number, status)

    def trial_finished(self, trial: TrialRecord, status: SearchStatus) -> None:
        self._search = (trial.number, status)
        self.on_trial(trial)
        # Told at once, throttle or not: trial N, best so far, time left.
        self._last = time.monotonic()
        self._unsent = None
        progress = self._progress(trial.rounds, trial.rounds, trial.metric_name, trial.metric_value)
        self._loop.call_soon_threadsafe(self._on_progress, progress)

    def _progress(
        self, iteration: int, total: int, metric_name: str, value: float
    ) -> training_job_pb2.TrainingProgress:
        progress = training_job_pb2.TrainingProgress(
            iteration=iteration, total_iterations=total, metric_name=metric_name, metric_value=value
        )
        if self._search is not None:
            number, status = self._search
            progress.trial = number
            progress.max_trials = status.max_trials
            progress.trials_done = status.trials_done
            progress.best_metric_name = status.metric_name
            if status.best_value is not None:
                progress.best_metric_value = status.best_value
            if status.seconds_left is not None:
                progress.time_left.FromNanoseconds(int(status.seconds_left * 1e9))
        return progress

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        progress = self._progress(iteration, total, metric_name, value)
        now = time.monotonic()
        if now - self._last < self._interval and iteration < total:
            self._unsent = progress  # sent by flush() if no later one goes out
            return
        self._last = now
        self._unsent = None
        self._loop.call_soon_threadsafe(self._on_progress, progress)

    def flush(self) -> None:
        """Send the last progress the throttle held back (early stopping ends before total)."""
        if self._unsent is not None:
            self._loop.call_soon_threadsafe(self._on_progress, self._unsent)
            self._unsent = None


class _RowsProgress:
    """Rows-done reports of a scoring job, from the scoring thread: at most one per
    progress interval, and always the last."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[scoring_job_pb2.ScoringProgress], None],
        interval: float,
        total: int,
    ) -> None:
        self._loop = loop
        self._send = send
        self._interval = interval
        self._total = total
        self._last = 0.0
        self._unsent: scoring_job_pb2.ScoringProgress | None = None

    def rows(self, done: int) -> None:
        progress = scoring_job_pb2.ScoringProgress(rows_done=done, rows_total=self._total)
        now = time.monotonic()
        if now - self._last < self._interval and done < self._total:
            self._unsent = progress
            return
        self._last, self._unsent = now, None
        self._loop.call_soon_threadsafe(self._send, progress)

    def flush(self) -> None:
        if self._unsent is not None:
            self._loop.call_soon_threadsafe(self._send, self._unsent)
            self._unsent = None


class JobRunner:
    def __init__(
        self,
        settings: TrainerSettings,
        events: EventPublisher,
        reader: DatasetReader,
        tracker: Tracker,
        executor: ThreadPoolExecutor,
        costs: CostBook | None = None,
        models: ModelCache | None = None,
        writer: DatasetWriter | None = None,
    ) -> None:
        self._settings = settings
        # Scoring jobs: the models Predict loads (one cache), the output's uploads.
        self._models = models or ModelCache(settings.predict_cache_size)
        self._writer = writer
        self._costs = costs or CostBook(settings.resolved_work_dir())
        self._events = events
        self._reader = reader
        self._tracker = tracker
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._config = PipelineConfig(
            validation_fraction=settings.validation_fraction,
            min_rows_per_class=settings.min_rows_per_class,
            max_classes=settings.max_classes,
            boosting_work_budget=settings.boosting_work_budget,
            num_threads=settings.resolved_num_threads(),
        )

    # -- attempts that end before training ------------------------------------------------

    async def exhausted(self, request: dispatch_pb2.TrainingRequest, attempt: int) -> Disposition:
        logger.warning("attempts exhausted", extra={"max_attempts": self._settings.max_attempts})
        status = make_status(
            grpc.StatusCode.ABORTED,
            reasons.ATTEMPTS_EXHAUSTED,
            f"delivered {attempt} times; a job is tried at most "
            f"{self._settings.max_attempts} times (a Trainer died or was stopped each time)",
        )
        await self._events.failed(request.job_id, attempt, status)
        return Disposition.ACK

    async def cancelled_before_start(
        self, request: dispatch_pb2.TrainingRequest, attempt: int
    ) -> Disposition:
        logger.info("cancelled before it started")
        await self._events.cancelled(request.job_id, attempt)
        return Disposition.ACK

    # -- a training attempt ------------------------------------------------------------------

    async def run(
        self, request: dispatch_pb2.TrainingRequest, attempt: int, control: JobControl
    ) -> Disposition:
        state = _Attempt(request=request, attempt=attempt, control=control)
        started = time.perf_counter()
        # The attempt works for the job's project: what it stores (a scoring job's output
        # dataset) goes there (runtime.access.outgoing_metadata).
        acting = access.set_caller(access.service_caller_for(request.project_id))
        try:
            await self._events.started(request.job_id, attempt)
            disposition = await self._outcome(state)
        except EventsUnavailable as error:
            # The job's outcome could not be told: deliver it again (an attempt that
            # registered a model reports it then, without training again).
            logger.warning("events cannot be published; retrying later", extra=error_fields(error))
            disposition = Disposition.RETRY_LATER
        finally:
            access.reset_caller(acting)
        metrics.ATTEMPTS.labels(disposition.value).inc()
        metrics.ATTEMPT_SECONDS.observe(time.perf_counter() - started)
        logger.info(
            "attempt finished",
            extra={
                "disposition": disposition.value,
                "seconds": round(time.perf_counter() - started, 3),
                "mlflow_seconds": state.timings.as_dict(),
                "mlflow_steps": state.timings.calls(),
            },
        )
        return disposition

    async def _outcome(self, state: _Attempt) -> Disposition:
        """Train (or score), and publish how it ended."""
        try:
            if state.request.HasField("scoring"):
                return await self._score(state)
            return await self._train(state)
        except TrainingFailure as failure:
            code = grpc.StatusCode[failure.code]
            return await self._fail(state, code, failure.reason, failure.message, failure.metadata)
        except TrainingStopped as stop:
            return await self._stopped(state, stop.why)
        except MlflowPermissionDenied as error:
            return await self._mlflow_refused(state, error)
        except (MlflowUnavailable, DatasetUnavailable, DaskUnavailable) as error:
            return await self._transient(state, error)
        except EventsUnavailable:
            raise
        except Exception as error:
            logger.exception("training failed unexpectedly")
            return await self._fail(
                state,
                grpc.StatusCode.INTERNAL,
                reasons.TRAINING_INTERNAL_ERROR,
                f"the Trainer failed unexpectedly: {type(error).__name__}: {error}",
            )

    async def _train(self, state: _Attempt) -> Disposition:
        request = state.request
        try:
            params = validate_params(
                request.params, max_threads=self._settings.resolved_num_threads()
            )
        except ServiceError as error:
            raise TrainingFailure(
                error.reason, error.message, invalid_argument=True, metadata=error.metadata
            ) from error
        dataset = await self._until_stopped(state, self._reader.get(request.dataset_id))
        state.job = job_info(request, state.attempt, dataset)
        if state.attempt > 1 and await self._recovered(state):
            return Disposition.ACK
        opening = self._in_thread(self._tracker.open_run, state.job, state.timings)
        try:
            loaded = await self._until_stopped(
                state, self._load(request, dataset, request.target_column)
            )
        finally:
            state.run = await opening
        state.control.check()
        succeeded = await self._in_thread(self._train_and_publish, state, loaded, params)
        await self._flush_progress(state)
        await self._events.succeeded(request.job_id, state.attempt, succeeded)
        self._executor.submit(
            self._tracker.record_timings, state.run.run_id, state.timings.as_dict()
        )
        return Disposition.ACK

    async def _score(self, state: _Attempt) -> Disposition:
        """A scoring job: the model version, the dataset's rows through it record batch
        by record batch, the output stored as a new dataset (batch/)."""
        request, scoring = state.request, state.request.scoring
        if self._writer is None:
            raise RuntimeError("this Trainer was built without a DatasetWriter")
        dataset = await self._until_stopped(state, self._reader.get(request.dataset_id))
        model = await self._until_stopped(
            state,
            self._in_thread(
                self._load_model,
                projects.registry_name(request.project_id, scoring.model_name),
                scoring.model_version,
            ),
        )
        progress = _RowsProgress(
            self._loop,
            functools.partial(self._send_scoring_progress, state),
            self._settings.progress_interval_seconds,
            int(dataset.row_count),
        )
        result = await self._until_stopped(
            state,
            score_dataset(
                datasets=self._reader,
                writer=self._writer,
                model=model,
                dataset=dataset,
                options=ScoringOptions(
                    tuple(scoring.pass_through_columns),
                    scoring.class_probabilities,
                    scoring.explain,
                ),
                work_dir=self._settings.resolved_work_dir() / "scoring",
                output_name=scoring.output_display_name or f"scored-{request.job_id}",
                # The same id on every attempt: a retried job stores no second copy.
                upload_request_id=f"scoring-{request.job_id}",
                upload_timeout=max(1.0, state.control.deadline - time.monotonic()),
                check=state.control.check,
                on_rows=progress.rows,
            ),
        )
        progress.flush()
        await self._flush_progress(state)
        logger.info(
            "dataset scored",
            extra={"rows": result.rows_scored, "output_dataset_id": result.output.dataset_id},
        )
        succeeded = dispatch_pb2.JobEvent.Succeeded(
            scoring_output=scoring_job_pb2.ScoringOutput(
                dataset_id=result.output.dataset_id,
                rows_scored=result.rows_scored,
                flagged_rows=result.flag_counts.flagged_rows,
                unseen_category_rows=result.flag_counts.unseen_category_rows,
                out_of_range_rows=result.flag_counts.out_of_range_rows,
                all_missing_rows=result.flag_counts.all_missing_rows,
            )
        )
        await self._events.succeeded(request.job_id, state.attempt, succeeded)
        return Disposition.ACK

    def _load_model(self, name: str, version: int) -> LoadedModel:
        """The version as Predict loads it; the registry's errors as the job's."""
        try:
            return self._models.load(name, version)
        except ServiceError as error:
            if error.code == grpc.StatusCode.UNAVAILABLE:
                raise MlflowUnavailable(error.message) from error
            raise TrainingFailure(
                error.reason, error.message, code=error.code.name, metadata=error.metadata
            ) from error

    def _send_scoring_progress(
        self, state: _Attempt, progress: scoring_job_pb2.ScoringProgress
    ) -> None:
        task = asyncio.ensure_future(
            self._events.scoring_progress(state.job_id, state.attempt, progress)
        )
        state.progress_sent.add(task)

    def on_dask(self, request: dispatch_pb2.TrainingRequest, dataset: dataset_pb2.Dataset) -> bool:
        """Datasets of `dask_min_rows` rows or more train on Dask, when a scheduler is set
        (a search or a replay trains in the Trainer: it needs the rows at hand)."""
        settings = self._settings
        return (
            bool(settings.dask_scheduler_address)
            and dataset.row_count >= settings.dask_min_rows
            and not request.HasField("search")
            and not request.replay.refit_params
        )

    async def _load(
        self, request: dispatch_pb2.TrainingRequest, dataset: dataset_pb2.Dataset, target: str
    ) -> LoadedDataset | ParquetSource:
        """The rows (single node), or where Dask workers read them."""
        if not self.on_dask(request, dataset):
            return await self._reader.read(dataset, target)
        columns = column_infos(dataset)
        if target not in {column.name for column in columns}:
            return await self._reader.read(dataset, target)  # fails TARGET_COLUMN_NOT_FOUND
        access = await self._reader.parquet_access(dataset)
        return ParquetSource(url=access.url, columns=columns)

    def _train_on(
        self,
        loaded: LoadedDataset | ParquetSource,
        state: _Attempt,
        params: dict[str, Any],
        hooks: _ThreadHooks,
    ) -> TrainingResult:
        """On the Dask cluster when the rows were left there, else in this process."""
        task = TASKS.get(state.request.task, Task.AUTO)
        target = state.request.target_column
        if isinstance(loaded, ParquetSource):
            with tracer().start_as_current_span("train lightgbm on dask"):
                return train_on_dask(
                    DaskTarget(
                        self._settings.dask_scheduler_address,
                        self._settings.dask_connect_timeout_seconds,
                        self._settings.dask_network_timeout_minutes,
                    ),
                    loaded,
                    target,
                    task,
                    params,
                    self._config,
                    hooks,
                    state.job_id,
                )
        with tracer().start_as_current_span("train lightgbm"):
            return self._fit(state.request, loaded, params, hooks)

    def _train_and_publish(
        self, state: _Attempt, loaded: LoadedDataset | ParquetSource, params: dict[str, Any]
    ) -> dispatch_pb2.JobEvent.Succeeded:
        """In the training thread: the pipeline, then everything MLflow keeps of it."""
        assert state.run is not None
        assert state.job is not None
        hooks = _ThreadHooks(
            state.control,
            self._loop,
            functools.partial(self._send_progress, state),
            functools.partial(self._send_decision, state),
            self._settings.progress_interval_seconds,
        )
        hooks.on_trial = functools.partial(self._log_trial, state)
        columns_read = (
            len(loaded.frame.columns)
            if isinstance(loaded, LoadedDataset) and loaded.frame is not None
            else 0
        )
        started, memory_before = time.perf_counter(), hooks.peak_rss
        result = self._train_on(loaded, state, params, hooks)
        hooks.flush()
        if not state.request.replay.refit_params:  # a replay's work is neither kind
            self._costs.record(
                measurement(
                    result,
                    columns_read,
                    time.perf_counter() - started,
                    hooks.peak_rss - memory_before,
                )
            )
        if "train_seconds" in result.timings:
            task = result.decision.task.value
            metrics.TRAINING_SECONDS.labels(task).observe(result.timings["train_seconds"])
        logger.info(
            "model trained",
            extra={
                "task": result.decision.task.value,
                "best_iteration": result.best_iteration,
                "metrics": result.metrics,
                **{key: round(value, 3) for key, value in result.timings.items()},
            },
        )
        succeeded = succeeded_event(result)
        published = self._tracker.publish(
            state.run,
            state.job,
            result,
            state.timings,
            json_format.MessageToJson(succeeded, indent=None),
        )
        # The trials' child runs were logged alongside; each sent its trial event.
        for future in state.trials_logged:
            future.result()  # never raises
        succeeded.mlflow.CopyFrom(mlflow_run(state.run, published))
        if result.evaluation is not None:  # its charts drawn while the run was logged
            succeeded.evaluation_report.CopyFrom(result.evaluation)
            succeeded.evaluation_report.job_id = state.job_id
        return succeeded

    def _fit(
        self,
        request: dispatch_pb2.TrainingRequest,
        loaded: LoadedDataset,
        params: dict[str, Any],
        hooks: _ThreadHooks,
    ) -> TrainingResult:
        """The default job, a search, or the replay of a searched job's final configuration."""
        task = TASKS.get(request.task, Task.AUTO)
        target = request.target_column
        # Each call takes the rows itself: a local name here would keep the frame (every
        # value read) alive until training ends, after the pipeline has let its own go.
        if request.HasField("search"):
            spec = SearchSpec(
                budget_seconds=request.search.budget.ToTimedelta().total_seconds()
                if request.search.HasField("budget")
                else None,
                max_trials=request.search.max_trials or None,
            )
            return search_model(
                loaded.take_frame(),
                loaded.columns,
                target,
                task,
                params,
                self._config,
                spec,
                hooks,
                loaded.rows_dropped_missing_target,
            )
        if request.replay.refit_params:
            recorded = {
                key: typed_param(value) for key, value in request.replay.refit_params.items()
            }
            return replay_refit(
                loaded.take_frame(),
                loaded.columns,
                target,
                task,
                recorded,
                self._config,
                hooks,
                loaded.rows_dropped_missing_target,
                request.replay.validation,
            )
        return train_model(
            loaded.take_frame(),
            loaded.columns,
            target,
            task,
            params,
            self._config,
            hooks,
            loaded.rows_dropped_missing_target,
        )

    def _log_trial(self, state: _Attempt, trial: TrialRecord) -> None:
        """In the training thread: the trial's child run is logged in the MLflow pool,
        which then sends the trial's event (with the run id when MLflow took it)."""
        assert state.run is not None
        assert state.job is not None

        def tell(run_id: str) -> None:
            message = trial_message(trial, state.attempt, run_id)
            self._loop.call_soon_threadsafe(self._send_trial, state, message)

        state.trials_logged.append(self._tracker.log_trial(state.run, state.job, trial, tell))

    def _send_trial(self, state: _Attempt, trial: training_job_pb2.Trial) -> None:
        task = asyncio.ensure_future(self._events.trial(state.job_id, state.attempt, trial))
        state.progress_sent.add(task)
        task.add_done_callback(state.progress_sent.discard)

    async def _recovered(self, state: _Attempt) -> bool:
        """An earlier attempt registered this job's model: report it rather than train again."""
        assert state.job is not None
        recovered = await self._in_thread(self._tracker.recover_job, state.job, state.timings)
        if recovered is None:
            return False
        logger.info(
            "an earlier attempt registered this job's model; reporting it",
            extra={"version": recovered.published.version},
        )
        succeeded = dispatch_pb2.JobEvent.Succeeded()
        json_format.Parse(recovered.job_result, succeeded, ignore_unknown_fields=True)
        succeeded.mlflow.CopyFrom(mlflow_run(recovered.run, recovered.published))
        await self._events.succeeded(state.job_id, state.attempt, succeeded)
        return True

    # -- outcomes -------------------------------------------------------------------------------

    async def _fail(
        self,
        state: _Attempt,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> Disposition:
        logger.info("job failed", extra={"reason": reason, "error": message})
        await self._close_run(state, "FAILED", reason)
        await self._flush_progress(state)
        # Users read this; the log line above keeps the addresses for operators.
        status = make_status(code, reason, without_urls(message), metadata)
        await self._events.failed(state.job_id, state.attempt, status, self._mlflow(state))
        return Disposition.ACK

    async def _stopped(self, state: _Attempt, why: str) -> Disposition:
        if why == "deadline":
            return await self._fail(
                state,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                reasons.DEADLINE_EXCEEDED,
                "the job ran longer than its max_run_duration and was stopped",
            )
        if why == "shutdown":
            logger.info("handing the job back on shutdown")
            await self._close_run(state, "KILLED", "handed back: the Trainer shut down")
            return Disposition.RETRY_NOW
        logger.info("job cancelled")
        await self._close_run(state, "KILLED", "cancelled")
        await self._flush_progress(state)
        await self._events.cancelled(state.job_id, state.attempt, self._mlflow(state))
        return Disposition.ACK

    async def _mlflow_refused(self, state: _Attempt, error: MlflowPermissionDenied) -> Disposition:
        """The Trainer's MLflow user may use only its experiments and the models it made:
        a model name someone else registered in MLflow cannot be trained into."""
        logger.warning("MLflow refused the Trainer's user", extra=error_fields(error))
        model_name = state.job.model_name if state.job else state.request.registered_model_name
        return await self._fail(
            state,
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.MLFLOW_PERMISSION_DENIED,
            f"MLflow does not let modelyard use registered model {limits.echo(model_name)!r} "
            "or its experiment: it belongs to another MLflow user; choose another "
            "registered_model_name",
            {"registered_model_name": limits.echo(model_name)},
        )

    async def _transient(self, state: _Attempt, error: Exception) -> Disposition:
        if isinstance(error, DaskUnavailable):
            reason = error.reason
        elif isinstance(error, MlflowUnavailable):
            reason = reasons.MLFLOW_UNAVAILABLE
        else:
            reason = reasons.DATASET_UNAVAILABLE
        if state.attempt < self._settings.max_attempts:
            logger.warning(
                "transient failure; the job will be tried again",
                extra={"reason": reason, **error_fields(error)},
            )
            await self._close_run(state, "FAILED", f"{reason}; retried")
            return Disposition.RETRY_LATER
        return await self._fail(state, grpc.StatusCode.UNAVAILABLE, reason, str(error))

    async def _close_run(self, state: _Attempt, status: str, why: str) -> None:
        if state.run is not None:
            await self._in_thread(self._tracker.end_run, state.run, status, state.timings, why)

    def _mlflow(self, state: _Attempt) -> training_job_pb2.MlflowRun | None:
        return mlflow_run(state.run, None) if state.run is not None else None

    # -- plumbing -----------------------------------------------------------------------------

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        """Run blocking work in the training pool, keeping the log context (job id)."""
        context = contextvars.copy_context()
        return await self._loop.run_in_executor(
            self._executor, functools.partial(context.run, call, *args)
        )

    async def _until_stopped(self, state: _Attempt, work: Any) -> Any:
        """Await `work` unless the job is stopped first (cancel, deadline, shutdown)."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(state.control.stopped.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise TrainingStopped(state.control.why or "cancelled")
        return task.result()

    def _send_progress(self, state: _Attempt, progress: training_job_pb2.TrainingProgress) -> None:
        task = asyncio.ensure_future(self._events.progress(state.job_id, state.attempt, progress))
        state.progress_sent.add(task)
        task.add_done_callback(state.progress_sent.discard)

    def _send_decision(self, state: _Attempt, decision: TaskDecision) -> None:
        """A second `started` once the task is known, with the MLflow run."""
        task = asyncio.ensure_future(
            self._events.started(
                state.job_id, state.attempt, task_detection(decision), self._mlflow(state)
            )
        )
        state.progress_sent.add(task)
        task.add_done_callback(state.progress_sent.discard)

    async def _flush_progress(self, state: _Attempt) -> None:
        """Progress events go out before the final event."""
        if state.progress_sent:
            await asyncio.gather(*state.progress_sent, return_exceptions=True)


def job_info(
    request: dispatch_pb2.TrainingRequest, attempt: int, dataset: dataset_pb2.Dataset
) -> JobInfo:
    """What MLflow records about the job; the registered model name checked or derived."""
    project = request.project_id or access.DEFAULT_PROJECT
    model_name = request.registered_model_name or derive_model_name(
        dataset.display_name or dataset.dataset_id,
        request.target_column,
        limits.max_model_name_chars(project),
    )
    rule = (
        limits.MODEL_NAME_RULE
        if not limits.is_model_name(model_name)
        else limits.model_name_too_long(model_name, project)
    )
    if rule is not None:  # Jobs refuses such a name first; a request may predate it
        raise TrainingFailure(
            reasons.REGISTERED_MODEL_NAME_INVALID,
            f"registered model name {limits.echo(model_name)!r} must be {rule}",
            invalid_argument=True,
            metadata={"registered_model_name": limits.echo(model_name)},
        )
    return JobInfo(
        job_id=request.job_id,
        attempt=attempt,
        dataset_id=dataset.dataset_id,
        dataset_name=dataset.display_name,
        dataset_sha256=dataset.sha256,
        dataset_rows=dataset.row_count,
        target_column=request.target_column,
        requested_task=TASKS.get(request.task, Task.AUTO).value,
        model_name=projects.registry_name(project, model_name),
        dataset_version=dataset.version,
        project=project,
    )


def task_detection(decision: TaskDecision) -> training_job_pb2.TaskDetection:
    return training_job_pb2.TaskDetection(
        task=TASK_ENUMS[decision.task], reason=decision.reason, class_names=decision.class_names
    )


def succeeded_event(result: TrainingResult) -> dispatch_pb2.JobEvent.Succeeded:
    summary = training_job_pb2.TrainingSummary(
        rows_used=result.rows_used,
        rows_dropped_missing_target=result.rows_dropped_missing_target,
        validation_rows=result.validation_rows,
        features=result.features,
        dropped_columns=[
            training_job_pb2.DroppedColumn(name=name, reason=why)
            for name, why in result.dropped_columns
        ],
        best_iteration=result.best_iteration,
        effective_params=as_strings(result.effective_params),
        model_sha256=result.model_sha256,
        engine=result.engine,
    )
    if isinstance(result.search, SearchOutcome):
        summary.search.CopyFrom(search_outcome(result.search))
    return dispatch_pb2.JobEvent.Succeeded(
        metrics=result.metrics, summary=summary, task_detection=task_detection(result.decision)
    )


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def without_urls(message: str) -> str:
    """A job error for users: internal addresses (MLflow, S3, a Dataset service's host)
    replaced, since an error text from a client library often quotes the URL it called."""
    return _URL.sub("<internal address>", message)


def mlflow_run(run: RunRef, published: PublishedModel | None) -> training_job_pb2.MlflowRun:
    message = training_job_pb2.MlflowRun(
        experiment_id=run.experiment_id, run_id=run.run_id, run_url=run.run_url
    )
    if published is not None:
        message.model_uri = published.model_uri
        message.registered_model_name = projects.public_name(published.model_name)
        message.registered_model_version = published.version
        message.promoted_to_champion = published.promoted_to_champion
        message.champion_decision = published.champion_note
    return message


def measurement(
    result: TrainingResult, columns_read: int, seconds: float, memory_growth: float
) -> Measurement:
    """What the job tells the cost book (fit/estimate.py)."""
    classes = len(result.decision.class_labels)
    shape = TableShape(
        result.rows_used, max(1, len(result.features)), classes if classes > 2 else 1
    )
    if isinstance(result.search, SearchOutcome):
        rounds, train_rows = result.search.boosting_rounds, result.search.train_rows
        train_seconds = result.timings.get("search_seconds", seconds)
    else:
        rounds = result.booster.current_iteration()
        train_rows = result.rows_used - result.validation_rows
        train_seconds = result.timings.get("train_seconds", seconds)
    return Measurement(
        shape=shape,
        boosting_rounds=rounds,
        train_rows=train_rows,
        train_seconds=train_seconds,
        wall_seconds=seconds,
        memory_growth_bytes=memory_growth,
        columns_read=columns_read,
    )


def search_outcome(outcome: SearchOutcome) -> training_job_pb2.SearchOutcome:
    return training_job_pb2.SearchOutcome(
        trials=len(outcome.trials),
        best_trial=outcome.best_trial,
        objective=outcome.objective,
        objectives_considered=outcome.objectives_considered,
        validation=outcome.validation,
        folds=outcome.folds,
        fold_repeats=outcome.fold_repeats,
        metric_std=outcome.metric_std,
        stopped_by=outcome.stopped_by,
        seconds=outcome.seconds,
    )


TRIAL_STATES = {
    "COMPLETE": training_job_pb2.Trial.STATE_COMPLETE,
    "PRUNED": training_job_pb2.Trial.STATE_PRUNED,
    "FAILED": training_job_pb2.Trial.STATE_FAILED,
}


def trial_message(trial: TrialRecord, attempt: int, run_id: str) -> training_job_pb2.Trial:
    message = training_job_pb2.Trial(
        number=trial.number,
        state=TRIAL_STATES[trial.state],
        params=trial.params,
        objective=trial.objective,
        metric_name=trial.metric_name,
        fold_metric_values=trial.fold_metric_values,
        rounds=trial.rounds,
        mlflow_run_id=run_id,
        attempt=attempt,
        best_so_far=trial.best_so_far,
    )
    if math.isfinite(trial.metric_value):
        message.metric_value = trial.metric_value
    message.duration.FromNanoseconds(int(trial.seconds * 1e9))
    return message
