"""NATS helpers (`runtime/messaging.py`) against a real nats-server: the streams and
the cancellations bucket every service relies on, made idempotently, and a clear
StartupError when NATS cannot be reached."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy

from devstack.components import NatsServer
from devstack.processes import free_port
from runtime.app import StartupError
from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    JOB_EVENTS_STREAM,
    LOCK_TTL_SECONDS,
    LOCKS_BUCKET,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    cancellations,
    close_quietly,
    connect,
    connect_at_start,
    ensure_buckets,
    ensure_streams,
    job_events_subject,
)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url, "runtime-messaging-test", nats_server.credentials())
    yield client
    await close_quietly(client)


async def test_streams_are_made_once_whoever_asks(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_streams(js)  # a second service starting: no error, no change
    requests = await js.stream_info(TRAINING_REQUESTS_STREAM)
    events = await js.stream_info(JOB_EVENTS_STREAM)
    assert requests.config.retention == RetentionPolicy.WORK_QUEUE
    assert requests.config.subjects == [TRAINING_REQUESTS_SUBJECT]
    assert events.config.retention == RetentionPolicy.LIMITS
    acknowledgement = await js.publish(job_events_subject("job-1"), b"event")
    assert acknowledgement.stream == JOB_EVENTS_STREAM


async def test_publishes_with_one_message_id_are_stored_once(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    subject = job_events_subject(f"dedup-{time.monotonic_ns()}")
    first = await js.publish(subject, b"e", headers={"Nats-Msg-Id": subject})
    again = await js.publish(subject, b"e", headers={"Nats-Msg-Id": subject})
    assert (first.duplicate, again.duplicate) == (None, True)


async def test_the_cancellations_bucket_is_shared(nc: NatsClient) -> None:
    js = nc.jetstream()
    flags = await cancellations(js)
    await flags.put("job-7", b"CANCEL_REQUESTED")
    again = await cancellations(js)
    assert (await again.get("job-7")).value == b"CANCEL_REQUESTED"
    assert (await js.key_value(CANCELLATIONS_BUCKET)) is not None


async def test_an_unreachable_nats_is_a_startup_error_naming_the_setting() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StartupError, match="MODELYARD_JOBS_NATS_URL"):
        await connect_at_start(url, "test", 1.0, "MODELYARD_JOBS_NATS_URL")
    assert time.monotonic() - started < 10


async def test_setup_moves_an_older_lock_bucket_to_the_current_ttl(nc: NatsClient) -> None:
    js = nc.jetstream()
    stream = await js.stream_info(f"KV_{LOCKS_BUCKET}")
    stream.config.max_age = 60.0  # as an older release made it
    await js.update_stream(stream.config)
    await ensure_buckets(js)
    moved = await js.stream_info(f"KV_{LOCKS_BUCKET}")
    assert moved.config.max_age == LOCK_TTL_SECONDS
