"""The events consumer: applies the Trainers' JobEvents to the stored jobs.

One durable pull consumer, `modelyard-jobs`, on stream MODELYARD_JOB_EVENTS
(subjects `modelyard.jobs.*.events`) is shared by every replica. Each event is
applied with the state machine and acked only after the database transaction
has committed, so a crash in between means a redelivery, which the state
machine ignores if the change is already stored.

Events are applied strictly in stream order, one at a time (`max_ack_pending`
= 1): whichever replica fetches the next event applies it, and none gets
another before it is acked. Replicas give failover, not parallel application,
because two replicas applying one job's events side by side could apply them
out of order: a final event before the last progress report, or a stale
attempt's failure before the newer attempt's start (which would fail a job
that is running). This bounds the whole deployment to a few hundred events a
second (a training job reports at most ~2 a second).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import limits
from runtime.logs import error_fields, log_context
from runtime.messaging import JOB_EVENTS_STREAM, JOB_EVENTS_SUBJECTS, JOBS_EVENTS_CONSUMER
from runtime.tracing import context_from_headers, tracer
from services.jobs import metrics
from services.jobs.backoff import Backoff
from services.jobs.store import JobStore
from services.jobs.transitions import apply_event_to_store

logger = logging.getLogger("modelyard.jobs.consumer")

FETCH_TIMEOUT_SECONDS = 5.0


def parse_event(msg: Msg) -> JobEvent | None:
    """The event in `msg`, its event_time filled from the stream when the sender left
    it out; None when the message is not a usable JobEvent."""
    try:
        event = JobEvent.FromString(msg.data)
    except DecodeError:
        return None
    if not event.job_id or event.WhichOneof("kind") is None:
        return None
    if not event.HasField("event_time"):
        stored = _stream_time(msg)
        if stored is not None:
            event.event_time.FromDatetime(stored)
        else:
            event.event_time.GetCurrentTime()
    # The database keeps microseconds: a watch's copy must equal the stored job.
    event.event_time.nanos -= event.event_time.nanos % 1000
    return event


def _stream_time(msg: Msg) -> datetime | None:
    """When JetStream stored the message; None for a core NATS message."""
    try:
        return msg.metadata.timestamp
    except Exception:
        return None


class EventsConsumer:
    def __init__(self, js: JetStreamContext, store: JobStore, ack_wait_seconds: float) -> None:
        self._js = js
        self._store = store
        self._ack_wait = ack_wait_seconds

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        """Bind to the durable consumer, creating it, or updating its configuration."""
        config = ConsumerConfig(
            durable_name=JOBS_EVENTS_CONSUMER,
            filter_subject=JOB_EVENTS_SUBJECTS,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=1,  # strict stream order across replicas (see above)
        )
        await self._js.add_consumer(JOB_EVENTS_STREAM, config)  # create or update
        return await self._js.pull_subscribe_bind(
            durable=JOBS_EVENTS_CONSUMER, stream=JOB_EVENTS_STREAM
        )

    async def run(self, subscription: JetStreamContext.PullSubscription) -> None:
        """Apply events until cancelled; a NATS or database outage is waited out."""
        backoff = Backoff()
        while True:
            try:
                # One at a time: a lone event is applied the moment it arrives
                # (a bigger batch would wait for the batch to fill or expire).
                messages = await subscription.fetch(1, timeout=FETCH_TIMEOUT_SECONDS)
            except nats.errors.TimeoutError:
                continue
            except Exception as error:
                logger.warning(
                    "fetching job events failed; retrying",
                    extra=error_fields(error),
                )
                await asyncio.sleep(backoff.next_delay())
                continue
            for message in messages:
                if await self.handle(message):
                    backoff.reset()
                else:
                    await asyncio.sleep(backoff.next_delay())

    async def handle(self, message: Msg) -> bool:
        """Apply one message and ack it; False when it must be retried later."""
        event = parse_event(message)
        if event is None:
            logger.error(
                "dropping a message that is not a JobEvent", extra={"subject": message.subject}
            )
            await message.term()
            return True
        span = tracer().start_as_current_span(
            f"apply {event.WhichOneof('kind')} event",
            context=context_from_headers(message.headers),
            kind=SpanKind.CONSUMER,
        )
        with log_context(job_id=event.job_id), span:
            if not 0 <= event.attempt <= limits.ATTEMPT_CEILING:
                logger.warning(
                    "event of an attempt never dispatched ignored",
                    extra={"attempt": event.attempt, "source": limits.echo(event.source, 80)},
                )
                metrics.EVENTS_IGNORED.labels(reason="attempt_out_of_range").inc()
                await _quietly(message.term())
                return True
            try:
                outcome = await apply_event_to_store(self._store, event)
                if outcome.job is not None and event.HasField("trial"):
                    event.trial.attempt = event.attempt
                    await self._store.save_trial(event.job_id, event.trial)
                if (
                    outcome.job is not None
                    and event.HasField("succeeded")
                    and event.succeeded.HasField("evaluation_report")
                    and event.attempt == outcome.job.attempt
                ):
                    await self._store.save_report(event.job_id, event.succeeded.evaluation_report)
            except Exception:
                logger.exception("applying a job event failed; it will be redelivered")
                await _quietly(message.nak(delay=1.0))
                return False
            if outcome.job is None:
                logger.warning("event for an unknown job ignored", extra={"source": event.source})
                metrics.EVENTS_IGNORED.labels(reason="unknown_job").inc()
            elif event.attempt < outcome.job.attempt:
                metrics.EVENTS_IGNORED.labels(reason="stale_attempt").inc()
            elif outcome.changed:
                kind = event.WhichOneof("kind")
                logger.log(
                    logging.DEBUG if kind == "progress" else logging.INFO,
                    "job changed",
                    extra={
                        "kind": kind,
                        "state": TrainingJob.State.Name(outcome.job.state),
                        "attempt": outcome.job.attempt,
                        "source": event.source,
                    },
                )
            await _quietly(message.ack())
        return True


async def _quietly(operation: Awaitable[None]) -> None:
    """Acks are best effort: a lost ack means a redelivery, which changes nothing."""
    try:
        await operation
    except Exception as error:
        logger.warning("ack/nak failed", extra=error_fields(error))
