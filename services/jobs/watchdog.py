"""The deadline watchdog: fails jobs whose Trainer went quiet past their limit.

The Trainer stops a job past its max_run_duration itself (failed,
DEADLINE_EXCEEDED). When the Trainer is gone, nobody would: so every
`watchdog_interval_seconds` each replica looks for RUNNING or CANCELLING jobs
past start_time + max_run_duration + deadline_grace_seconds and fails them with
the same reason, publishing a JobEvent (so watchers see it) and setting the
job's cancel flag (so a Trainer that is merely stuck stops). Replicas racing on
one job are harmless: the change is conditional on the job not having changed.

Optionally (`max_queued_seconds` > 0) a job that has waited that long for a
Trainer is failed with QUEUED_TOO_LONG; its cancel flag makes a Trainer that
fetches it later skip it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc

from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import make_status
from runtime.logs import log_context
from services.jobs import reasons
from services.jobs.backoff import Backoff
from services.jobs.outbox import cancel_flag_entry, job_event_entry
from services.jobs.settings import JobsSettings
from services.jobs.state_machine import ACTIVE_STATES, Job, apply_event, failure_event
from services.jobs.store import JobStore
from services.jobs.transitions import Decision, change_job

logger = logging.getLogger("modelyard.jobs.watchdog")


class DeadlineWatchdog:
    def __init__(
        self, store: JobStore, wake_relay: Callable[[], None], settings: JobsSettings
    ) -> None:
        self._store = store
        self._wake_relay = wake_relay
        self._interval = settings.watchdog_interval_seconds
        self._grace = timedelta(seconds=settings.deadline_grace_seconds)
        self._max_queued = (
            timedelta(seconds=settings.max_queued_seconds) if settings.max_queued_seconds else None
        )

    async def run(self) -> None:
        backoff = Backoff(initial=self._interval, maximum=max(self._interval, 30.0))
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("deadline watchdog pass failed; retrying")
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """Fail every overdue job once; returns how many were failed."""
        now = datetime.now(UTC)
        failed = 0
        for job_id in await self._store.overdue_job_ids(now - self._grace):
            failed += await self._fail(job_id, now, self._overdue_failure)
        if self._max_queued is not None:
            for job_id in await self._store.queued_job_ids(now - self._max_queued):
                failed += await self._fail(job_id, now, self._queued_failure)
        if failed:
            self._wake_relay()
        return failed

    async def _fail(
        self,
        job_id: str,
        now: datetime,
        failure: Callable[[Job, datetime], tuple[str, grpc.StatusCode, str] | None],
    ) -> int:
        def decide(job: Job) -> Decision | None:
            found = failure(job, now)  # checked again on the freshly read job
            if found is None:
                return None
            reason, code, message = found
            event = failure_event(job, now, make_status(code, reason, message))
            updated = apply_event(job, event)
            if updated is None:
                return None
            return Decision(updated, (job_event_entry(event), cancel_flag_entry(job_id, reason)))

        with log_context(job_id=job_id):
            outcome = await change_job(self._store, job_id, decide)
            if outcome.changed and outcome.job is not None:
                logger.warning(
                    "job failed by the watchdog",
                    extra={"reason": outcome.job.error.message, "attempt": outcome.job.attempt},
                )
                return 1
        return 0

    def _overdue_failure(self, job: Job, now: datetime) -> tuple[str, grpc.StatusCode, str] | None:
        if job.state not in ACTIVE_STATES or not job.HasField("start_time"):
            return None
        limit = job.max_run_duration.ToTimedelta()
        if job.start_time.ToDatetime(tzinfo=UTC) + limit + self._grace > now:
            return None
        return (
            reasons.DEADLINE_EXCEEDED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the job ran past its max_run_duration of {limit.total_seconds():g}s "
            f"(attempt {job.attempt}) and its Trainer did not stop it",
        )

    def _queued_failure(self, job: Job, now: datetime) -> tuple[str, grpc.StatusCode, str] | None:
        assert self._max_queued is not None
        if job.state != TrainingJob.QUEUED:
            return None
        if job.create_time.ToDatetime(tzinfo=UTC) + self._max_queued > now:
            return None
        return (
            reasons.QUEUED_TOO_LONG,
            grpc.StatusCode.UNAVAILABLE,
            f"no Trainer took the job within {self._max_queued.total_seconds():g}s",
        )
