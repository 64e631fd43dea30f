"""The Jobs service's own Prometheus metrics: jobs by state, the training queue
and the events consumer's lag. They are sampled, not counted, so that every
replica reports the same truth and a restart loses nothing."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.logs import error_fields
from runtime.messaging import (
    JOB_EVENTS_STREAM,
    JOBS_EVENTS_CONSUMER,
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
)
from services.jobs.store import JobStore

logger = logging.getLogger("modelyard.jobs.metrics")

JOBS = Gauge("modelyard_jobs", "Training jobs in the database, by state.", ["state"])
QUEUE_PENDING = Gauge(
    "modelyard_training_queue_pending",
    "TrainingRequests waiting for a Trainer (the trainers' consumer's pending messages).",
)
QUEUE_UNACKED = Gauge(
    "modelyard_training_queue_unacknowledged",
    "TrainingRequests a Trainer holds and has not finished (acknowledgements pending).",
)
# Counted, not sampled: each replica counts the events it was handed.
EVENTS_IGNORED = Counter(
    "modelyard_job_events_ignored",
    "JobEvents ignored, by reason (attempt_out_of_range: an attempt no Trainer was given; "
    "stale_attempt: older than the job's; unknown_job: no such job).",
    ["reason"],
)
EVENTS_LAG = Gauge(
    "modelyard_job_events_lag",
    "JobEvents not yet applied by the Jobs service (its consumer's pending messages).",
)


async def sample_forever(store: JobStore, js: JetStreamContext, interval_seconds: float) -> None:
    while True:
        try:
            await sample(store, js)
        except Exception as error:  # a metrics round must never take the service down
            logger.warning("metrics sample failed", extra=error_fields(error))
        await asyncio.sleep(interval_seconds)


async def sample(store: JobStore, js: JetStreamContext) -> None:
    counts = await store.count_by_state()
    for state in TrainingJob.State.values():
        if state != TrainingJob.STATE_UNSPECIFIED:
            JOBS.labels(TrainingJob.State.Name(state)).set(counts.get(state, 0))
    try:
        trainers = await js.consumer_info(TRAINING_REQUESTS_STREAM, TRAINERS_CONSUMER)
    except NotFoundError:  # no Trainer has started yet: everything published is waiting
        stream = await js.stream_info(TRAINING_REQUESTS_STREAM)
        QUEUE_PENDING.set(stream.state.messages)
        QUEUE_UNACKED.set(0)
    else:
        QUEUE_PENDING.set(trainers.num_pending or 0)
        QUEUE_UNACKED.set(trainers.num_ack_pending or 0)
    events = await js.consumer_info(JOB_EVENTS_STREAM, JOBS_EVENTS_CONSUMER)
    EVENTS_LAG.set((events.num_pending or 0) + (events.num_ack_pending or 0))
