"""A job's life as the Trainer reports it: events applied, cancels, watches, deadlines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import REGISTRY

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelTrainingJobRequest,
    CreateTrainingJobRequest,
    GetTrainingJobRequest,
    WatchTrainingJobRequest,
)
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import limits
from runtime.db import create_engine, migrate
from runtime.errors import error_metadata, error_reason, make_status, status_reason
from runtime.messaging import job_events_subject
from services.jobs.app import MIGRATIONS_DIR
from services.jobs.store import JobStore
from services.jobs.transitions import apply_event_to_store
from services.jobs.watch import JobWatcher
from tests.jobs.jobs_support import Collected, RunningJobs, eventually

pytestmark = pytest.mark.slow

S = TrainingJob


async def create(jobs: RunningJobs, **fields: Any) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(
            dataset_id=jobs.doubles.datasets.add(),
            target_column="y",
            **fields,
        ),
        timeout=10,
    )
    return job


async def cancel(jobs: RunningJobs, job_id: str) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CancelTrainingJob(
        CancelTrainingJobRequest(job_id=job_id), timeout=10
    )
    return job


async def running_job(jobs: RunningJobs, **fields: Any) -> TrainingJob:
    """A job a (test) Trainer has taken and started, attempt 1."""
    job = await create(jobs, **fields)
    _, message = await jobs.trainer.take(job.job_id)
    assert message.metadata.num_delivered == 1
    await jobs.trainer.publish(job.job_id, 1, started={})
    await message.ack()
    return await jobs.wait_for_job(job.job_id, lambda j: j.state == S.RUNNING)


def progress(iteration: int, value: float) -> dict[str, object]:
    return {
        "progress": {
            "iteration": iteration,
            "total_iterations": 100,
            "metric_name": "binary_logloss",
            "metric_value": value,
        }
    }


# -- events --------------------------------------------------------------------------------


async def test_trainer_events_take_a_job_to_succeeded(jobs: RunningJobs) -> None:
    job = await create(jobs)
    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(
        job.job_id, 1, started={"task_detection": {"task": S.BINARY, "reason": "2 labels"}}
    )
    running = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.RUNNING)
    assert running.attempt == 1
    assert running.task_detection.task == S.BINARY
    assert running.HasField("start_time")

    await jobs.trainer.publish(job.job_id, 1, **progress(10, 0.4))
    running = await jobs.wait_for_job(job.job_id, lambda j: j.progress.iteration == 10)
    assert (running.progress.total_iterations, running.progress.metric_value) == (100, 0.4)

    await jobs.trainer.publish(
        job.job_id,
        1,
        succeeded={
            "metrics": {"accuracy": 0.95, "roc_auc": 0.99},
            "mlflow": {
                "run_id": "run-1",
                "model_uri": "models:/m-1",
                "registered_model_name": "m",
                "registered_model_version": 3,
            },
            "summary": {"rows_used": 500, "best_iteration": 42},
        },
    )
    await message.ack()
    done = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    assert dict(done.metrics) == {"accuracy": 0.95, "roc_auc": 0.99}
    assert done.mlflow.run_id == "run-1"
    assert done.mlflow.model_uri == "models:/m-1"
    assert done.mlflow.registered_model_version == 3
    assert done.summary.best_iteration == 42
    assert done.HasField("end_time")


async def test_redelivery_records_the_attempt_and_ignores_the_dead_trainer(
    jobs: RunningJobs,
) -> None:
    job = await create(jobs)
    _, first = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, first.metadata.num_delivered, started={})
    await jobs.wait_for_job(job.job_id, lambda j: j.state == S.RUNNING)
    # the first Trainer dies: no ack, so JetStream redelivers after ack_wait
    _, second = await jobs.trainer.take(job.job_id, within=15)
    assert second.metadata.num_delivered == 2
    await jobs.trainer.publish(job.job_id, 2, started={})
    await jobs.wait_for_job(job.job_id, lambda j: j.attempt == 2)

    # the first Trainer was only slow: its late reports change nothing
    await jobs.trainer.publish(job.job_id, 1, **progress(99, 0.1))
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 0.1}})
    await jobs.trainer.publish(job.job_id, 2, **progress(5, 0.5))
    current = await jobs.wait_for_job(job.job_id, lambda j: j.progress.iteration == 5)
    assert (current.state, current.attempt) == (S.RUNNING, 2)
    assert not current.metrics

    exhausted = make_status(
        grpc.StatusCode.ABORTED, "ATTEMPTS_EXHAUSTED", "the job failed 3 attempts"
    )
    await jobs.trainer.publish(job.job_id, 4, failed={"error": exhausted})
    await second.ack()
    failed = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.FAILED)
    assert failed.attempt == 4
    assert status_reason(failed.error) == "ATTEMPTS_EXHAUSTED"


async def test_an_event_of_an_attempt_never_dispatched_is_ignored_and_counted(
    jobs: RunningJobs,
) -> None:
    """The forged `started` of attempt 2147483647 made every real event look stale."""
    ignored = ("modelyard_job_events_ignored_total", {"reason": "attempt_out_of_range"})
    stale = ("modelyard_job_events_ignored_total", {"reason": "stale_attempt"})
    before = (REGISTRY.get_sample_value(*ignored) or 0, REGISTRY.get_sample_value(*stale) or 0)
    job = await create(jobs)
    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 2147483647, started={})
    await jobs.trainer.publish(job.job_id, limits.ATTEMPT_CEILING + 1, succeeded={})
    await jobs.trainer.publish(job.job_id, 1, started={})
    await jobs.wait_for_job(job.job_id, lambda j: j.state == S.RUNNING)
    await jobs.trainer.publish(job.job_id, 0, **progress(3, 0.3))  # older than the job's
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 0.9}})
    await message.ack()
    done = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    assert (done.attempt, dict(done.metrics)) == (1, {"accuracy": 0.9})
    after = (REGISTRY.get_sample_value(*ignored) or 0, REGISTRY.get_sample_value(*stale) or 0)
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


async def test_an_event_delivered_twice_changes_nothing(jobs: RunningJobs) -> None:
    job = await running_job(jobs)
    event = await jobs.trainer.publish(job.job_id, 1, **progress(30, 0.2))
    await jobs.wait_for_job(job.job_id, lambda j: j.progress.iteration == 30)
    await jobs.trainer.publish(job.job_id, 1, **progress(31, 0.19))
    await jobs.wait_for_job(job.job_id, lambda j: j.progress.iteration == 31)
    # the same event again (under a new message id, so JetStream does not drop it)
    event.event_id = "replayed-" + event.event_id
    await jobs.trainer.publish_event(event)
    # then an event that touches something else, to know the replay was applied
    await jobs.trainer.publish(job.job_id, 1, started={"task_detection": {"task": S.REGRESSION}})
    after = await jobs.wait_for_job(job.job_id, lambda j: j.task_detection.task == S.REGRESSION)
    assert (after.state, after.progress.iteration, after.progress.metric_value) == (
        S.RUNNING,
        31,
        0.19,
    )


async def test_garbage_on_the_events_subject_is_dropped(jobs: RunningJobs) -> None:
    job = await running_job(jobs)
    await jobs.js.publish(job_events_subject(job.job_id), b"\xff\xfenot a protobuf")
    await jobs.js.publish(
        job_events_subject("unknown-job"),
        JobEvent(job_id="unknown-job", attempt=1, started={}).SerializeToString(),
    )
    await jobs.trainer.publish(job.job_id, 1, **progress(1, 0.9))
    after = await jobs.wait_for_job(job.job_id, lambda j: j.progress.iteration == 1)
    assert after.state == S.RUNNING  # the consumer went on past both


# -- cancel --------------------------------------------------------------------------------


async def test_cancel_of_a_queued_job_is_immediate_and_flags_it(jobs: RunningJobs) -> None:
    job = await create(jobs)
    cancelled = await cancel(jobs, job.job_id)
    assert cancelled.state == S.CANCELLED
    assert cancelled.HasField("end_time")
    assert (await jobs.get(job.job_id)).state == S.CANCELLED
    # the request may already be in the stream: the flag tells a Trainer to skip it
    assert await jobs.trainer.cancel_flag(job.job_id) is not None
    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, cancelled={})  # a Trainer skipping it says so
    await message.ack()
    await asyncio.sleep(0.2)
    assert (await jobs.get(job.job_id)).state == S.CANCELLED


async def test_cancel_of_a_running_job_waits_for_the_trainer(jobs: RunningJobs) -> None:
    job = await running_job(jobs)
    cancelling = await cancel(jobs, job.job_id)
    assert cancelling.state == S.CANCELLING
    assert await jobs.trainer.cancel_flag(job.job_id) is not None
    again = await cancel(jobs, job.job_id)
    assert again.state == S.CANCELLING

    await jobs.trainer.publish(job.job_id, 1, cancelled={"mlflow": {"run_id": "killed-run"}})
    done = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.CANCELLED)
    assert done.mlflow.run_id == "killed-run"


async def test_cancel_of_a_final_job_is_refused(jobs: RunningJobs) -> None:
    job = await running_job(jobs)
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"rmse": 1.5}})
    await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cancel(jobs, job.job_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "JOB_ALREADY_FINISHED"
    assert (await jobs.get(job.job_id)).state == S.SUCCEEDED


@pytest.mark.parametrize(
    ("job_id", "code", "reason"),
    [
        ("0" * 32, grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "JOB_ID_REQUIRED"),
        ("a.b.>", grpc.StatusCode.INVALID_ARGUMENT, "JOB_ID_INVALID"),
    ],
)
async def test_unknown_or_malformed_job_ids(
    jobs: RunningJobs, job_id: str, code: grpc.StatusCode, reason: str
) -> None:
    calls = [
        jobs.stub.GetTrainingJob(GetTrainingJobRequest(job_id=job_id), timeout=5),
        jobs.stub.CancelTrainingJob(CancelTrainingJobRequest(job_id=job_id), timeout=5),
        collect(jobs, job_id),
    ]
    details = []
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code(), error_reason(caught.value)) == (code, reason)
        details.append(error_metadata(caught.value))
    # The same error has the same details whichever RPC answered (Watch had no job_id).
    assert details[0] == details[1] == details[2]
    if reason == "JOB_NOT_FOUND":
        assert details[0] == {"job_id": job_id}


# -- watch ---------------------------------------------------------------------------------


async def collect(jobs: RunningJobs, job_id: str, into: Collected | None = None) -> Collected:
    collected = into or Collected()
    stream = jobs.stub.WatchTrainingJob(WatchTrainingJobRequest(job_id=job_id), timeout=30)
    async for update in stream:
        collected.updates.append(update.training_job)
    collected.ended = True
    return collected


async def watching(jobs: RunningJobs, job_id: str) -> AsyncIterator[Collected]:
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job_id, collected))
    await eventually(lambda: asyncio.sleep(0, collected.updates), lambda u: len(u) > 0)
    yield collected
    await asyncio.wait_for(task, 10)


async def test_watch_streams_the_snapshot_then_each_change_then_ends(jobs: RunningJobs) -> None:
    job = await create(jobs)
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job.job_id, collected))
    await eventually(lambda: asyncio.sleep(0, collected), lambda c: len(c.updates) == 1)

    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, started={})
    for iteration in (1, 2, 3):
        await jobs.trainer.publish(job.job_id, 1, **progress(iteration, 1.0 / iteration))
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 0.9}})
    await message.ack()
    await asyncio.wait_for(task, 10)

    states = [(u.state, u.progress.iteration) for u in collected.updates]
    assert states == [
        (S.QUEUED, 0),
        (S.RUNNING, 0),
        (S.RUNNING, 1),
        (S.RUNNING, 2),
        (S.RUNNING, 3),
        (S.SUCCEEDED, 3),
    ]
    assert collected.ended
    stored = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    assert collected.updates[-1] == stored  # the watch's copy is the stored job


async def test_watch_sees_cancel_requests_and_their_end(jobs: RunningJobs) -> None:
    job = await running_job(jobs)
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job.job_id, collected))
    await eventually(lambda: asyncio.sleep(0, collected), lambda c: len(c.updates) == 1)
    await cancel(jobs, job.job_id)
    await eventually(lambda: asyncio.sleep(0, collected), lambda c: len(c.updates) == 2)
    await jobs.trainer.publish(job.job_id, 1, cancelled={})
    await asyncio.wait_for(task, 10)
    assert [u.state for u in collected.updates] == [S.RUNNING, S.CANCELLING, S.CANCELLED]


async def test_watch_of_a_queued_job_cancelled(jobs: RunningJobs) -> None:
    job = await create(jobs)
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job.job_id, collected))
    await eventually(lambda: asyncio.sleep(0, collected), lambda c: len(c.updates) == 1)
    await cancel(jobs, job.job_id)
    await asyncio.wait_for(task, 10)
    assert [u.state for u in collected.updates] == [S.QUEUED, S.CANCELLED]


async def test_watch_of_a_final_job_sends_it_once_and_ends(jobs: RunningJobs) -> None:
    job = await create(jobs)
    await cancel(jobs, job.job_id)
    collected = await asyncio.wait_for(collect(jobs, job.job_id), 5)
    assert [u.state for u in collected.updates] == [S.CANCELLED]
    assert collected.ended


async def test_watch_catches_up_from_the_database_when_it_missed_an_event(
    jobs: RunningJobs,
) -> None:
    """A watch whose NATS messages were lost still converges (after watch_refresh_seconds)."""
    job = await running_job(jobs)
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job.job_id, collected))
    await eventually(lambda: asyncio.sleep(0, collected), lambda c: len(c.updates) == 1)
    # change the stored job behind the watch's back, through a store that announces
    # nothing: as if this replica's subscriptions had dropped both the event and the
    # announcement of the change
    assert jobs.app.engine is not None
    silent_store = JobStore(jobs.app.engine)
    await apply_event_to_store(silent_store, succeeded_event(job.job_id))
    await asyncio.wait_for(task, 10)
    assert [u.state for u in collected.updates] == [S.RUNNING, S.SUCCEEDED]


async def test_watch_sees_a_change_stored_after_its_read_without_the_event(
    jobs: RunningJobs,
) -> None:
    """The race of a Trainer event published just before the watch subscribed and stored
    just after it read the job: the watch never gets the event, but the change is
    announced, and reaches it long before it would re-read the database."""
    job = await running_job(jobs)
    assert jobs.app.engine is not None
    store = JobStore(jobs.app.engine)
    watcher = JobWatcher(jobs.nc, store, refresh_seconds=120)
    store.add_change_listener(watcher.announce)
    updates = watcher.watch(job.job_id)
    try:
        assert (await anext(updates)).state == S.RUNNING
        await apply_event_to_store(store, succeeded_event(job.job_id))  # no event on NATS
        after = await asyncio.wait_for(anext(updates), 10)
        assert after.state == S.SUCCEEDED
        assert isinstance(after, TrainingJob)
        assert after.metrics["accuracy"] == pytest.approx(0.8)
    finally:
        await updates.aclose()


@pytest.fixture
async def lagging_store(tmp_path: Path) -> AsyncIterator[JobStore]:
    """A store of its own, which the service's events consumer never writes: the test
    plays the consumer, and stores a Trainer's event when it chooses (a lagging one)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'lagging.db'}")
    await migrate(engine, MIGRATIONS_DIR)
    yield JobStore(engine)
    await engine.dispose()


@pytest.mark.parametrize("announced", [True, False], ids=["announced", "re-read"])
async def test_watch_ends_only_once_get_returns_the_final_state(
    jobs: RunningJobs, lagging_store: JobStore, announced: bool
) -> None:
    """Read-your-writes: the Trainer's final event reaches a watch before the events
    consumer has stored it. The watch holds the final state back until the store has it
    (announced on the change subject, or found by re-reading), then sends the stored job,
    so a Get right after the watch ends sees the final state too."""
    job = TrainingJob(
        job_id=uuid.uuid4().hex, dataset_id="d", target_column="y", state=S.RUNNING, attempt=1
    )
    job.create_time.GetCurrentTime()
    job.update_time.GetCurrentTime()
    await lagging_store.insert(job, [])
    watcher = JobWatcher(jobs.nc, lagging_store, refresh_seconds=120)
    if announced:
        lagging_store.add_change_listener(watcher.announce)
    updates = watcher.watch(job.job_id)
    try:
        assert (await anext(updates)).state == S.RUNNING
        final = await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 0.75}})
        ended = asyncio.create_task(anext(updates))
        await asyncio.sleep(0.5)  # the watch has the event; the store still says RUNNING
        assert not ended.done()
        await apply_event_to_store(lagging_store, final)
        sent = await asyncio.wait_for(ended, 5)
        stored = await lagging_store.get(job.job_id)
        assert stored is not None
        assert sent == stored.job  # what a Get returns: SUCCEEDED with its metrics
        assert sent.state == S.SUCCEEDED
        assert isinstance(sent, TrainingJob)
        assert sent.metrics["accuracy"] == pytest.approx(0.75)
        with pytest.raises(StopAsyncIteration):
            await anext(updates)
    finally:
        await updates.aclose()


def succeeded_event(job_id: str) -> JobEvent:
    event = JobEvent(job_id=job_id, attempt=1, source="trainer/elsewhere", event_id=f"{job_id}-ok")
    event.event_time.GetCurrentTime()
    event.succeeded.metrics["accuracy"] = 0.8
    return event


async def test_watch_stops_when_the_client_goes_away(jobs: RunningJobs) -> None:
    job = await create(jobs)
    stream = jobs.stub.WatchTrainingJob(WatchTrainingJobRequest(job_id=job.job_id), timeout=30)
    first = await stream.read()
    assert first.training_job.state == S.QUEUED
    stream.cancel()
    await asyncio.sleep(0.2)
    assert jobs.app.nc is not None
    # the watch's NATS subscription is gone (nats-py keeps no public list of them)
    subject = job_events_subject(job.job_id)
    subscribed = [sub for sub in jobs.app.nc._subs.values() if sub.subject == subject]
    assert subscribed == []


async def test_watch_ends_at_the_calls_deadline(jobs: RunningJobs) -> None:
    job = await create(jobs)
    stream = jobs.stub.WatchTrainingJob(WatchTrainingJobRequest(job_id=job.job_id), timeout=0.5)
    first = await stream.read()
    assert first.training_job.state == S.QUEUED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- deadlines -----------------------------------------------------------------------------


async def test_a_job_past_its_max_run_duration_fails_with_deadline_exceeded(
    jobs: RunningJobs,
) -> None:
    job = await running_job(jobs, max_run_duration=Duration(seconds=1))
    collected = Collected()
    task = asyncio.create_task(collect(jobs, job.job_id, collected))
    failed = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.FAILED, within=10)
    assert status_reason(failed.error) == "DEADLINE_EXCEEDED"
    assert failed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    elapsed = failed.end_time.ToDatetime() - failed.start_time.ToDatetime()
    assert elapsed >= timedelta(seconds=1.5)  # max_run_duration + grace
    # a stuck Trainer is told to stop (the flag goes out through the outbox, so it may
    # arrive just after the job reads FAILED), and watchers saw it happen
    flag = await eventually(lambda: jobs.trainer.cancel_flag(job.job_id), lambda f: f is not None)
    assert flag == b"DEADLINE_EXCEEDED"
    await asyncio.wait_for(task, 10)
    assert [u.state for u in collected.updates] == [S.RUNNING, S.FAILED]
    # the Trainer's own report arriving later changes nothing
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 1.0}})
    await asyncio.sleep(0.3)
    assert (await jobs.get(job.job_id)).state == S.FAILED


async def test_a_cancelling_job_whose_trainer_is_gone_also_fails(jobs: RunningJobs) -> None:
    job = await running_job(jobs, max_run_duration=Duration(seconds=1))
    await cancel(jobs, job.job_id)
    failed = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.FAILED, within=10)
    assert status_reason(failed.error) == "DEADLINE_EXCEEDED"


async def test_a_queued_job_has_no_run_deadline(jobs: RunningJobs) -> None:
    job = await create(jobs, max_run_duration=Duration(seconds=1))
    await asyncio.sleep(2.0)
    assert (await jobs.get(job.job_id)).state == S.QUEUED
    await cancel(jobs, job.job_id)
