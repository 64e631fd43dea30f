"""Changing a stored job safely when several writers may race: the events
consumer of every replica, CancelTrainingJob and the deadline watchdog.

`change_job` reads the job, lets `decide` compute the new job (with the outbox
rows that go with it), and writes it only if nobody changed the job in between
(optimistic concurrency on `version`); otherwise it reads again and decides
again, on the fresh job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from services.jobs.outbox import OutboxEntry
from services.jobs.state_machine import Job, apply_event
from services.jobs.store import JobStore

MAX_CONFLICTS = 20


@dataclass(frozen=True)
class Decision:
    job: Job
    outbox: Sequence[OutboxEntry] = field(default_factory=tuple)


@dataclass(frozen=True)
class Outcome:
    job: Job | None  # None: no such job
    changed: bool


class ConflictError(Exception):
    """The job kept changing under us; the caller may retry later."""


async def change_job(
    store: JobStore, job_id: str, decide: Callable[[Job], Decision | None]
) -> Outcome:
    for _ in range(MAX_CONFLICTS):
        current = await store.get(job_id)
        if current is None:
            return Outcome(None, False)
        decision = decide(current.job)
        if decision is None:
            return Outcome(current.job, False)
        if await store.replace(decision.job, current.version, decision.outbox):
            return Outcome(decision.job, True)
    raise ConflictError(job_id)


async def apply_event_to_store(store: JobStore, event: JobEvent) -> Outcome:
    """Apply an event to the stored job (idempotent: see state_machine)."""

    def decide(job: Job) -> Decision | None:
        updated = apply_event(job, event)
        return None if updated is None else Decision(updated)

    return await change_job(store, event.job_id, decide)
