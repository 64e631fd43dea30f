"""How a job changes when something happens to it: one pure function.

`apply_event(job, event)` returns the job as it is after the event, or None
when the event changes nothing. The events consumer applies it to the stored
job, and every WatchTrainingJob stream applies it to its own copy, so both see
the same sequence of states. The rules (docs: the Jobs ↔ Trainer contract):

- a job in a final state never changes;
- an event of an older attempt than the job's is ignored (stale Trainer);
- an event of a newer attempt starts that attempt: the job is RUNNING again
  (a CANCELLING job stays CANCELLING) with that attempt and a fresh start time;
- progress only moves forward within an attempt (a search's by trial, then iteration);
- a search's trial changes nothing on the job itself (the events consumer keeps it
  for ListTrials);
- a replay's success records whether its model hash matched the original's;
- applying an event twice changes nothing the second time.

Scoring jobs (ScoringJob) live by the same rules: their states have the same
numbers as a training job's, their progress is rows done (only forward), and
their success records the output dataset. `Job` is either message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import overload

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.scoring_job_pb2 import ScoringJob
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import make_status
from services.jobs import reasons

Job = TrainingJob | ScoringJob

FINAL_STATES = frozenset({TrainingJob.SUCCEEDED, TrainingJob.FAILED, TrainingJob.CANCELLED})
ACTIVE_STATES = frozenset({TrainingJob.RUNNING, TrainingJob.CANCELLING})
JOBS_SOURCE = "jobs"

# Event kinds that mean "a Trainer is working on this attempt".
_TRAINER_ACTIVITY = frozenset({"started", "progress", "scoring_progress"})


def is_final(state: int) -> bool:
    return state in FINAL_STATES


@overload
def apply_event(job: TrainingJob, event: JobEvent) -> TrainingJob | None: ...
@overload
def apply_event(job: ScoringJob, event: JobEvent) -> ScoringJob | None: ...
@overload
def apply_event(job: Job, event: JobEvent) -> Job | None: ...
def apply_event(job: Job, event: JobEvent) -> Job | None:
    """The job after `event`, or None when the event changes nothing."""
    kind = event.WhichOneof("kind")
    if kind is None or is_final(job.state) or event.attempt < job.attempt:
        return None
    updated = type(job).FromString(job.SerializeToString())
    if event.attempt > job.attempt or (
        job.state == TrainingJob.QUEUED and kind in _TRAINER_ACTIVITY
    ):
        _begin_attempt(updated, event)
    _APPLY[kind](updated, event)
    if updated == job:
        return None
    if _seconds(event.event_time) > _seconds(updated.update_time):
        updated.update_time.CopyFrom(event.event_time)
    return updated


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def _begin_attempt(job: Job, event: JobEvent) -> None:
    job.attempt = max(job.attempt, event.attempt)
    if job.state != TrainingJob.CANCELLING:
        job.state = TrainingJob.RUNNING
    job.start_time.CopyFrom(event.event_time)
    job.ClearField("progress")


def _started(job: Job, event: JobEvent) -> None:
    if isinstance(job, ScoringJob):
        return  # a scoring job's start carries nothing but the attempt
    started = event.started
    if started.HasField("task_detection"):
        job.task_detection.CopyFrom(started.task_detection)
    if started.HasField("mlflow"):
        job.mlflow.CopyFrom(started.mlflow)


def _progress(job: Job, event: JobEvent) -> None:
    if job.state not in ACTIVE_STATES or not isinstance(job, TrainingJob):
        return
    old, new = job.progress, event.progress
    if job.HasField("progress") and (new.trial, new.iteration) < (old.trial, old.iteration):
        return  # an older report overtaken by a newer one
    job.progress.CopyFrom(event.progress)


def _scoring_progress(job: Job, event: JobEvent) -> None:
    if job.state not in ACTIVE_STATES or not isinstance(job, ScoringJob):
        return
    new = event.scoring_progress
    if job.HasField("progress") and new.rows_done < job.progress.rows_done:
        return  # an older report overtaken by a newer one
    job.progress.CopyFrom(new)


def _succeeded(job: Job, event: JobEvent) -> None:
    succeeded = event.succeeded
    job.state = TrainingJob.SUCCEEDED
    if isinstance(job, ScoringJob):
        job.output.CopyFrom(succeeded.scoring_output)
        rows = succeeded.scoring_output.rows_scored
        job.progress.rows_done = rows
        job.progress.rows_total = max(job.progress.rows_total, rows)
        _end(job, event)
        return
    job.metrics.clear()
    job.metrics.update(succeeded.metrics)
    if succeeded.HasField("mlflow"):
        job.mlflow.CopyFrom(succeeded.mlflow)
    if succeeded.HasField("summary"):
        job.summary.CopyFrom(succeeded.summary)
    if succeeded.HasField("task_detection"):
        job.task_detection.CopyFrom(succeeded.task_detection)
    if job.HasField("replay"):
        job.replay.model_sha256_matches = bool(job.summary.model_sha256) and (
            job.summary.model_sha256 == job.replay.expected_model_sha256
        )
    _end(job, event)


def _failed(job: Job, event: JobEvent) -> None:
    failed = event.failed
    job.state = TrainingJob.FAILED
    if failed.HasField("error"):
        job.error.CopyFrom(failed.error)
    else:
        job.error.CopyFrom(
            make_status(
                grpc.StatusCode.UNKNOWN,
                reasons.TRAINING_FAILED,
                f"{event.source or 'the Trainer'} reported a failure without details",
            )
        )
    if failed.HasField("mlflow") and isinstance(job, TrainingJob):
        job.mlflow.CopyFrom(failed.mlflow)
    _end(job, event)


def _cancelled(job: Job, event: JobEvent) -> None:
    job.state = TrainingJob.CANCELLED
    if event.cancelled.HasField("mlflow") and isinstance(job, TrainingJob):
        job.mlflow.CopyFrom(event.cancelled.mlflow)
    _end(job, event)


def _cancel_requested(job: Job, event: JobEvent) -> None:
    if job.state == TrainingJob.RUNNING:
        job.state = TrainingJob.CANCELLING


def _trial(job: Job, event: JobEvent) -> None:
    return None  # kept apart from the job (ListTrials); progress events carry the count


def _end(job: Job, event: JobEvent) -> None:
    job.end_time.CopyFrom(event.event_time)


_APPLY: dict[str, Callable[[Job, JobEvent], None]] = {
    "started": _started,
    "progress": _progress,
    "scoring_progress": _scoring_progress,
    "succeeded": _succeeded,
    "failed": _failed,
    "cancelled": _cancelled,
    "cancel_requested": _cancel_requested,
    "trial": _trial,
}


# -- events the Jobs service itself emits -------------------------------------------


def jobs_event(job: Job, now: datetime) -> JobEvent:
    """An event about `job` from the Jobs service, of the job's current attempt."""
    event = JobEvent(
        job_id=job.job_id, attempt=job.attempt, source=JOBS_SOURCE, event_id=uuid.uuid4().hex
    )
    event.event_time.FromDatetime(now)
    return event


def cancel_event(job: Job, now: datetime) -> JobEvent | None:
    """What a cancel request does to a job that is not final: a QUEUED job is
    cancelled at once, a RUNNING one waits for its Trainer (CANCELLING)."""
    event = jobs_event(job, now)
    if job.state == TrainingJob.QUEUED:
        event.cancelled.SetInParent()
    elif job.state == TrainingJob.RUNNING:
        event.cancel_requested.SetInParent()
    else:
        return None  # already CANCELLING (or final): nothing more to do
    return event


def failure_event(job: Job, now: datetime, error: status_pb2.Status) -> JobEvent:
    event = jobs_event(job, now)
    event.failed.error.CopyFrom(error)
    return event


def state_name(job: Job) -> str:
    return TrainingJob.State.Name(job.state)  # the same names for both kinds


def kind_of(job: Job) -> str:
    """The `kind` column of a stored job: `training` or `scoring`."""
    return SCORING if isinstance(job, ScoringJob) else TRAINING


TRAINING = "training"
SCORING = "scoring"
