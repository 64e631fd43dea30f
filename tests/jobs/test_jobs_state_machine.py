"""The job state machine, as a pure function: job + event → new job or nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.scoring_job_pb2 import ScoringJob
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import make_status, status_reason
from services.jobs.state_machine import apply_event, cancel_event, failure_event, is_final

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(state: int = TrainingJob.QUEUED, attempt: int = 0) -> TrainingJob:
    created = TrainingJob(job_id="job1", dataset_id="ds", target_column="y", state=state)  # type: ignore[arg-type]
    created.attempt = attempt
    created.create_time.FromDatetime(T0)
    created.update_time.FromDatetime(T0)
    created.max_run_duration.FromTimedelta(timedelta(hours=1))
    return created


def event(attempt: int, seconds: float = 1.0, **kind: Any) -> JobEvent:
    made = JobEvent(job_id="job1", attempt=attempt, source="trainer/t", event_id="e", **kind)
    made.event_time.FromDatetime(T0 + timedelta(seconds=seconds))
    return made


def apply_all(start: TrainingJob, *events: JobEvent) -> TrainingJob:
    current = start
    for each in events:
        current = apply_event(current, each) or current
    return current


def progress(iteration: int, value: float = 0.5) -> dict[str, Any]:
    return {
        "progress": {
            "iteration": iteration,
            "total_iterations": 100,
            "metric_name": "binary_logloss",
            "metric_value": value,
        }
    }


def test_started_moves_a_queued_job_to_running_with_its_attempt() -> None:
    started = event(1, 2.0, started={"task_detection": {"task": TrainingJob.BINARY}})
    running = apply_event(job(), started)
    assert running is not None
    assert running.state == TrainingJob.RUNNING
    assert running.attempt == 1
    assert running.start_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=2)
    assert running.update_time == started.event_time
    assert running.task_detection.task == TrainingJob.BINARY


def test_the_same_event_twice_changes_nothing_the_second_time() -> None:
    kinds: tuple[dict[str, Any], ...] = (
        {"started": {}},
        progress(5),
        {"succeeded": {"metrics": {"accuracy": 0.9}}},
        {"cancel_requested": {}},
    )
    for kind in kinds:
        once = apply_all(job(TrainingJob.RUNNING, 1), event(1, 3.0, **kind))
        assert apply_event(once, event(1, 3.0, **kind)) is None, kind


def test_a_final_job_never_changes() -> None:
    for final in (TrainingJob.SUCCEEDED, TrainingJob.FAILED, TrainingJob.CANCELLED):
        assert is_final(final)
        done = job(final, 1)
        kinds: tuple[dict[str, Any], ...] = (
            {"started": {}},
            progress(1),
            {"succeeded": {}},
            {"failed": {}},
            {"cancelled": {}},
            {"cancel_requested": {}},
        )
        for kind in kinds:
            assert apply_event(done, event(1, **kind)) is None
            assert apply_event(done, event(2, **kind)) is None  # not even a newer attempt


def test_events_of_an_older_attempt_are_ignored() -> None:
    second = apply_all(job(), event(1, 1.0, started={}), event(2, 5.0, started={}))
    assert second.attempt == 2
    kinds: tuple[dict[str, Any], ...] = (
        progress(50),
        {"succeeded": {}},
        {"failed": {}},
        {"cancelled": {}},
    )
    for kind in kinds:
        assert apply_event(second, event(1, 6.0, **kind)) is None


def test_a_newer_attempt_restarts_the_job_and_clears_old_progress() -> None:
    first = apply_all(job(), event(1, 1.0, started={}), event(1, 2.0, **progress(40)))
    assert first.progress.iteration == 40
    second = apply_event(first, event(2, 10.0, started={}))
    assert second is not None
    assert (second.state, second.attempt) == (TrainingJob.RUNNING, 2)
    assert not second.HasField("progress")
    assert second.start_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=10)


def test_a_newer_attempt_keeps_a_cancelling_job_cancelling() -> None:
    cancelling = apply_all(job(), event(1, 1.0, started={}), event(1, 2.0, cancel_requested={}))
    assert cancelling.state == TrainingJob.CANCELLING
    redelivered = apply_event(cancelling, event(2, 3.0, started={}))
    assert redelivered is not None
    assert (redelivered.state, redelivered.attempt) == (TrainingJob.CANCELLING, 2)


def test_progress_only_moves_forward_within_an_attempt() -> None:
    running = apply_all(job(), event(1, 1.0, started={}), event(1, 3.0, **progress(20, 0.3)))
    assert apply_event(running, event(1, 2.0, **progress(10, 0.4))) is None
    ahead = apply_event(running, event(1, 4.0, **progress(21, 0.29)))
    assert ahead is not None
    assert (ahead.progress.iteration, ahead.progress.metric_value) == (21, 0.29)


def test_progress_before_started_still_starts_the_attempt() -> None:
    """Two replicas may apply an attempt's events out of order."""
    running = apply_event(job(), event(1, 2.0, **progress(3)))
    assert running is not None
    assert (running.state, running.attempt, running.progress.iteration) == (
        TrainingJob.RUNNING,
        1,
        3,
    )


def test_succeeded_records_metrics_mlflow_and_end_time() -> None:
    succeeded = event(
        1,
        9.0,
        succeeded={
            "metrics": {"accuracy": 0.93, "f1": 0.91},
            "mlflow": {"run_id": "r1", "model_uri": "models:/m/1", "registered_model_version": 1},
            "summary": {"rows_used": 100},
            "task_detection": {"task": TrainingJob.BINARY},
        },
    )
    done = apply_all(job(), event(1, 1.0, started={}), succeeded)
    assert done.state == TrainingJob.SUCCEEDED
    assert dict(done.metrics) == {"accuracy": 0.93, "f1": 0.91}
    assert (done.mlflow.run_id, done.mlflow.registered_model_version) == ("r1", 1)
    assert done.summary.rows_used == 100
    assert done.end_time == succeeded.event_time


def test_failed_keeps_the_trainers_error() -> None:
    error = make_status(grpc.StatusCode.INVALID_ARGUMENT, "TARGET_CONSTANT", "constant target")
    failed = apply_all(job(), event(1, 1.0, started={}), event(1, 2.0, failed={"error": error}))
    assert failed.state == TrainingJob.FAILED
    assert status_reason(failed.error) == "TARGET_CONSTANT"


def test_failed_without_details_still_explains() -> None:
    failed = apply_all(job(), event(1, 1.0, started={}), event(1, 2.0, failed={}))
    assert failed.state == TrainingJob.FAILED
    assert status_reason(failed.error) == "TRAINING_FAILED"


def test_attempts_exhausted_fails_the_job_at_the_last_attempt() -> None:
    error = make_status(grpc.StatusCode.ABORTED, "ATTEMPTS_EXHAUSTED", "3 attempts failed")
    failed = apply_all(
        job(),
        event(1, 1.0, started={}),
        event(2, 2.0, started={}),
        event(3, 3.0, started={}),
        event(4, 4.0, failed={"error": error}),
    )
    assert (failed.state, failed.attempt) == (TrainingJob.FAILED, 4)
    assert status_reason(failed.error) == "ATTEMPTS_EXHAUSTED"


def test_cancel_of_a_queued_job_cancels_it_at_once() -> None:
    queued = job()
    cancel = cancel_event(queued, T0 + timedelta(seconds=1))
    assert cancel is not None
    assert cancel.WhichOneof("kind") == "cancelled"
    assert cancel.source == "jobs"
    cancelled = apply_event(queued, cancel)
    assert cancelled is not None
    assert cancelled.state == TrainingJob.CANCELLED
    assert cancelled.HasField("end_time")


def test_cancel_of_a_running_job_waits_for_the_trainer() -> None:
    running = apply_event(job(), event(1, 1.0, started={}))
    assert running is not None
    cancel = cancel_event(running, T0 + timedelta(seconds=2))
    assert cancel is not None
    assert cancel.WhichOneof("kind") == "cancel_requested"
    assert cancel.attempt == 1
    cancelling = apply_event(running, cancel)
    assert cancelling is not None
    assert cancelling.state == TrainingJob.CANCELLING
    assert cancel_event(cancelling, T0) is None  # asking again changes nothing
    # progress still shows while the Trainer reaches its next iteration
    cancelling = apply_event(cancelling, event(1, 3.0, **progress(7))) or cancelling
    assert (cancelling.state, cancelling.progress.iteration) == (TrainingJob.CANCELLING, 7)
    cancelled = apply_event(cancelling, event(1, 4.0, cancelled={"mlflow": {"run_id": "r9"}}))
    assert cancelled is not None
    assert (cancelled.state, cancelled.mlflow.run_id) == (TrainingJob.CANCELLED, "r9")


def test_a_cancelling_job_that_finishes_anyway_succeeds() -> None:
    cancelling = apply_all(job(), event(1, 1.0, started={}), event(1, 2.0, cancel_requested={}))
    done = apply_event(cancelling, event(1, 3.0, succeeded={"metrics": {"rmse": 1.0}}))
    assert done is not None
    assert done.state == TrainingJob.SUCCEEDED


def test_cancel_requested_does_nothing_to_a_queued_job() -> None:
    assert apply_event(job(), event(0, cancel_requested={})) is None


def test_deadline_failure_from_the_jobs_service() -> None:
    running = apply_event(job(), event(1, 1.0, started={}))
    assert running is not None
    error = make_status(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "too long")
    failure = failure_event(running, T0 + timedelta(hours=2), error)
    assert (failure.source, failure.attempt) == ("jobs", 1)
    failed = apply_event(running, failure)
    assert failed is not None
    assert failed.state == TrainingJob.FAILED
    assert status_reason(failed.error) == "DEADLINE_EXCEEDED"


def test_update_time_never_goes_backwards() -> None:
    running = apply_event(job(), event(1, 10.0, started={}))
    assert running is not None
    late = apply_event(running, event(1, 5.0, **progress(1)))  # a Trainer clock behind ours
    assert late is not None
    assert late.update_time == running.update_time


def test_an_event_without_a_kind_changes_nothing() -> None:
    assert apply_event(job(), event(1)) is None


# -- scoring jobs: the same rules, their own progress and outcome ------------------------


def apply_all_scoring(start: ScoringJob, *events: JobEvent) -> ScoringJob:
    current = start
    for each in events:
        current = apply_event(current, each) or current
    return current


def scoring_job(state: int = ScoringJob.QUEUED, attempt: int = 0) -> ScoringJob:
    created = ScoringJob(job_id="job1", dataset_id="ds", model_name="m", model_version=3)
    created.state = state  # type: ignore[assignment]
    created.attempt = attempt
    created.create_time.FromDatetime(T0)
    created.update_time.FromDatetime(T0)
    return created


def rows(done: int, total: int = 1000) -> dict[str, Any]:
    return {"scoring_progress": {"rows_done": done, "rows_total": total}}


def test_a_scoring_job_runs_reports_rows_forward_only_and_records_its_output() -> None:
    running = apply_all_scoring(
        scoring_job(), event(1, 1.0, started={}), event(1, 2.0, **rows(500))
    )
    assert running.state == ScoringJob.RUNNING
    assert running.progress.rows_done == 500
    assert apply_event(running, event(1, 3.0, **rows(200))) is None  # overtaken report

    output = {"dataset_id": "out", "rows_scored": 1000, "flagged_rows": 7}
    done = apply_event(running, event(1, 4.0, succeeded={"scoring_output": output}))
    assert done is not None
    assert done.state == ScoringJob.SUCCEEDED
    assert done.output.dataset_id == "out"
    assert done.output.flagged_rows == 7
    assert done.progress.rows_done == 1000
    assert done.end_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=4)


def test_a_scoring_job_retried_restarts_its_rows_and_ignores_the_old_attempt() -> None:
    first = apply_all_scoring(scoring_job(), event(1, 1.0, started={}), event(1, 2.0, **rows(600)))
    second = apply_event(first, event(2, 3.0, started={}))
    assert second is not None
    assert second.attempt == 2
    assert not second.HasField("progress")  # the new attempt starts from row 0
    stale = event(1, 4.0, failed={"error": {"code": 14, "message": "lost"}})
    assert apply_event(second, stale) is None


def test_a_training_progress_event_changes_no_scoring_job() -> None:
    running = apply_all_scoring(scoring_job(), event(1, 1.0, started={}))
    assert apply_event(running, event(1, 2.0, **progress(5))) is None
