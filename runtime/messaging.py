"""NATS JetStream: the subjects, streams and buckets the services agree on.

The message bodies are the protobuf messages of
`protos/modelyard/dispatch/v1/dispatch.proto`; this module names where they
travel. The streams and buckets are created by the setup identity alone
(`ensure_streams`, `ensure_buckets`, run by `runtime.nats_setup`); a service only
looks them up (`wait_for_setup`), since its NATS user may not create anything
(runtime/nats_access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

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
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from runtime.app import StartupError
from runtime.logs import error_fields

logger = logging.getLogger("modelyard.messaging")

TRAINING_REQUESTS_STREAM = "MODELYARD_TRAINING_REQUESTS"
TRAINING_REQUESTS_SUBJECT = "modelyard.training.requests"

JOB_EVENTS_STREAM = "MODELYARD_JOB_EVENTS"
JOB_EVENTS_SUBJECTS = "modelyard.jobs.*.events"
# Core NATS only (outside the events stream): Jobs announces every change it commits.
JOB_CHANGES_SUBJECTS = "modelyard.jobs.*.changes"

# Durable consumers: one shared by every Trainer, one shared by every Jobs replica.
TRAINERS_CONSUMER = "modelyard-trainers"
JOBS_EVENTS_CONSUMER = "modelyard-jobs"

# Key = job id; present means "cancel this job". Written by Jobs, watched by Trainers.
CANCELLATIONS_BUCKET = "modelyard-job-cancellations"
# Key = champion.<model>; the Trainers' champion lock (services/training/work/locks.py).
LOCKS_BUCKET = "modelyard-trainer-locks"
# A holder renews its key every third of this; a holder that dies keeps the lock at
# most this long (it was 60 s without renewal: each Trainer killed while promoting
# stalled every other Trainer's promotion of that model for a minute).
LOCK_TTL_SECONDS = 15.0

DAY_SECONDS = 24 * 3600.0


def job_events_subject(job_id: str) -> str:
    return f"modelyard.jobs.{job_id}.events"


def job_changes_subject(job_id: str) -> str:
    return f"modelyard.jobs.{job_id}.changes"


def inbox_prefix(user: str) -> str:
    """Where a client of `user` receives replies; its permissions allow only this prefix."""
    return f"_INBOX.{user}"


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user. Its replies come on `_INBOX.<user>.`, the only inbox its permissions
    let it read (runtime/nats_access.py)."""

    user: str
    password: str

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user)


async def connect(
    url: str,
    client_name: str,
    credentials: NatsCredentials | None = None,
    errors: list[Exception] | None = None,
) -> NatsClient:
    """Connect, and keep reconnecting for as long as the process lives; the errors the
    client reports are logged, and kept in `errors` when given."""

    async def on_error(error: Exception) -> None:
        logger.warning("nats error", extra=error_fields(error))
        if errors is not None:
            errors.append(error)

    async def on_disconnected() -> None:
        logger.warning("nats disconnected")

    async def on_reconnected() -> None:
        logger.info("nats reconnected")

    login: dict[str, str] = {}
    if credentials is not None:
        login = {
            "user": credentials.user,
            "password": credentials.password,
            "inbox_prefix": credentials.inbox_prefix,
        }
    return await nats.connect(
        servers=url.split(","),
        name=client_name,
        **login,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


async def connect_at_start(
    url: str,
    client_name: str,
    timeout_seconds: float,
    url_variable: str,
    credentials: NatsCredentials | None = None,
) -> NatsClient:
    """`connect`, but a process that cannot reach NATS within `timeout_seconds` at start
    stops with a StartupError naming the variable to fix, instead of waiting forever;
    one whose credentials are refused says so, naming the user and the variables."""
    errors: list[Exception] = []
    try:
        async with asyncio.timeout(timeout_seconds):
            return await connect(url, client_name, credentials, errors)
    except (TimeoutError, OSError, nats.errors.Error) as error:
        if any("authorization" in str(seen).lower() for seen in [*errors, error]):
            user = credentials.user if credentials else "(none)"
            prefix = url_variable.removesuffix("_URL")
            raise StartupError(
                f"NATS at {url} refused the credentials of user {user} "
                f"(set {prefix}_USER and {prefix}_PASSWORD)"
            ) from error
        if isinstance(error, nats.errors.Error):
            raise
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
    """Create the streams or bring them up to date (setup identity only)."""
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


async def ensure_buckets(js: JetStreamContext) -> None:
    """Create the key-value buckets that do not exist yet (setup identity only)."""
    for config in (
        KeyValueConfig(
            bucket=CANCELLATIONS_BUCKET, history=1, ttl=7 * DAY_SECONDS, storage=StorageType.FILE
        ),
        KeyValueConfig(
            bucket=LOCKS_BUCKET, history=1, ttl=LOCK_TTL_SECONDS, storage=StorageType.FILE
        ),
    ):
        try:
            await js.key_value(config.bucket)
        except BucketNotFoundError:
            await js.create_key_value(config)
            continue
        await _keep_bucket_ttl(js, config)


async def _keep_bucket_ttl(js: JetStreamContext, config: KeyValueConfig) -> None:
    """A bucket made by an older release keeps its TTL unless the setup step moves it."""
    stream = await js.stream_info(f"KV_{config.bucket}")
    if config.ttl is not None and stream.config.max_age != config.ttl:
        stream.config.max_age = config.ttl
        await js.update_stream(stream.config)


async def cancellations(js: JetStreamContext) -> KeyValue:
    return await js.key_value(CANCELLATIONS_BUCKET)


async def wait_for_setup(
    js: JetStreamContext,
    streams: tuple[str, ...],
    buckets: tuple[str, ...],
    timeout_seconds: float,
) -> None:
    """Wait until the setup step has created what a service uses; a StartupError after
    `timeout_seconds` names what is missing (a service may not create it itself)."""
    names = [*streams, *(f"KV_{bucket}" for bucket in buckets)]
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while True:
        missing = [name for name in names if not await _stream_exists(js, name)]
        if not missing:
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise StartupError(
                f"NATS has no stream {', '.join(missing)} after {timeout_seconds:g}s: "
                "the setup step creates them (python -m runtime.nats_setup; make up and deploy/ "
                "run it)"
            )
        await asyncio.sleep(0.5)


async def _stream_exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
    except NotFoundError:
        return False
    return True


async def _add_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (an older release): bring it up to date.
        await js.update_stream(config)
