"""NATS JetStream: the subjects, streams and buckets the services agree on.

The message bodies are the protobuf messages of
`protos/modelyard/dispatch/v1/dispatch.proto`; this module only names where they
travel and makes sure the streams exist (every service that publishes or
consumes calls `ensure_streams`, which is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from runtime.app import StartupError
from runtime.logs import error_fields

logger = logging.getLogger("modelyard.messaging")

TRAINING_REQUESTS_STREAM = "MODELYARD_TRAINING_REQUESTS"
TRAINING_REQUESTS_SUBJECT = "modelyard.training.requests"

JOB_EVENTS_STREAM = "MODELYARD_JOB_EVENTS"
JOB_EVENTS_SUBJECTS = "modelyard.jobs.*.events"

# Durable consumers: one shared by every Trainer, one shared by every Jobs replica.
TRAINERS_CONSUMER = "modelyard-trainers"
JOBS_EVENTS_CONSUMER = "modelyard-jobs"

# Key = job id; present means "cancel this job". Written by Jobs, watched by Trainers.
CANCELLATIONS_BUCKET = "modelyard-job-cancellations"

DAY_SECONDS = 24 * 3600.0


def job_events_subject(job_id: str) -> str:
    return f"modelyard.jobs.{job_id}.events"


async def connect(url: str, client_name: str) -> NatsClient:
    """Connect, and keep reconnecting for as long as the process lives."""

    async def on_error(error: Exception) -> None:
        logger.warning("nats error", extra=error_fields(error))

    async def on_disconnected() -> None:
        logger.warning("nats disconnected")

    async def on_reconnected() -> None:
        logger.info("nats reconnected")

    return await nats.connect(
        servers=url.split(","),
        name=client_name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


async def connect_at_start(
    url: str, client_name: str, timeout_seconds: float, url_variable: str
) -> NatsClient:
    """`connect`, but a process that cannot reach NATS within `timeout_seconds` at start
    stops with a StartupError naming the variable to fix, instead of waiting forever."""
    try:
        async with asyncio.timeout(timeout_seconds):
            return await connect(url, client_name)
    except (TimeoutError, OSError) as error:
        raise StartupError(
            f"cannot reach NATS at {url} within {timeout_seconds:g}s "
            f"(set {url_variable} to a NATS server with JetStream enabled)"
        ) from error


async def close_quietly(nc: NatsClient, timeout_seconds: float = 5.0) -> None:
    """Close a connection at shutdown; a server already gone is no error then."""
    if nc.is_closed:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_seconds):
            await nc.close()


async def ensure_streams(js: JetStreamContext) -> None:
    await _add_or_update(
        js,
        StreamConfig(
            name=TRAINING_REQUESTS_STREAM,
            subjects=[TRAINING_REQUESTS_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600.0,  # a relay re-publishing after a crash is deduplicated
            max_age=7 * DAY_SECONDS,
        ),
    )
    await _add_or_update(
        js,
        StreamConfig(
            name=JOB_EVENTS_STREAM,
            subjects=[JOB_EVENTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=600.0,
            max_age=7 * DAY_SECONDS,
            max_msgs_per_subject=100_000,
            discard=DiscardPolicy.OLD,
        ),
    )


async def cancellations(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(CANCELLATIONS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=CANCELLATIONS_BUCKET,
                history=1,
                ttl=7 * DAY_SECONDS,
                storage=StorageType.FILE,
            )
        )


async def _add_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (an older release): bring it up to date.
        await js.update_stream(config)
