"""NATS trust boundaries: each forgery found by probing a live stack, replayed against a
real nats-server started with the permission table of runtime/nats_access.py, and shown
refused; next to each, the identity that owns the subject does the same thing and it
works, so a refusal here is the permission at work and not a broken broker.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from devstack.components import NatsServer, start_nats
from devstack.processes import ManagedProcess, free_port
from modelyard.dispatch.v1 import dispatch_pb2
from runtime import nats_access
from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    JOB_EVENTS_STREAM,
    JOBS_EVENTS_CONSUMER,
    LOCKS_BUCKET,
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    inbox_prefix,
    job_changes_subject,
    job_events_subject,
)

pytestmark = pytest.mark.slow

# A denied JetStream call gets no answer: keep the wait for it short.
DENIED_WAIT_SECONDS = 1.0


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server of its own: the allowed counterparts below store messages in its streams."""
    server = start_nats(tmp_path_factory.mktemp("security-nats"))
    yield server
    server.process.stop()


@dataclass
class Probe:
    """A client logged in as one identity, keeping the errors the server sends it."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> nats.js.JetStreamContext:
        return self.nc.jetstream(timeout=DENIED_WAIT_SECONDS)

    async def violation(self, kind: str, subject: str) -> None:
        """Wait for the server's 'Permissions Violation for <kind> to "<subject>"'."""
        expected = f'permissions violation for {kind} to "{subject}"'.lower()
        for _ in range(50):
            if any(expected in error.lower() for error in self.errors):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} violation on {subject}; errors: {self.errors}")


async def login(server: NatsServer, user: str, password: str | None = None) -> Probe:
    probe = Probe(nc=NatsClient())

    async def on_error(error: Exception) -> None:
        probe.errors.append(str(error))

    await probe.nc.connect(
        servers=[server.url],
        user=user,
        password=server.passwords[user] if password is None else password,
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=3,
    )
    return probe


async def refused_connect(server: NatsServer, **credentials: str) -> None:
    """Connect once, expecting an Authorization Violation.

    nats-py leaves the socket of a refused connect open when reconnecting is off;
    closing the client closes it (else it is garbage collected with a ResourceWarning).
    """
    nc = NatsClient()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(
                servers=[server.url],
                allow_reconnect=False,
                connect_timeout=3,
                max_reconnect_attempts=0,
                **credentials,  # type: ignore[arg-type]
            )
    finally:
        await nc.close()


@pytest.fixture
async def as_jobs(secured_nats: NatsServer) -> AsyncIterator[Probe]:
    probe = await login(secured_nats, nats_access.JOBS)
    yield probe
    await probe.nc.close()


@pytest.fixture
async def as_trainer(secured_nats: NatsServer) -> AsyncIterator[Probe]:
    probe = await login(secured_nats, nats_access.TRAINER)
    yield probe
    await probe.nc.close()


@pytest.fixture
async def as_admin(secured_nats: NatsServer) -> AsyncIterator[NatsClient]:
    nc = await secured_nats.connect()
    yield nc
    await nc.close()


async def stream_messages(admin: NatsClient, stream: str) -> int:
    return int((await admin.jetstream().stream_info(stream)).state.messages)


# -- who may connect ------------------------------------------------------------------------


async def test_a_client_without_credentials_is_refused(secured_nats: NatsServer) -> None:
    await refused_connect(secured_nats)


async def test_a_wrong_password_is_refused(secured_nats: NatsServer) -> None:
    await refused_connect(secured_nats, user=nats_access.TRAINER, password="guessed")


# -- forged results -------------------------------------------------------------------------


async def test_only_jobs_and_trainers_publish_job_events(
    secured_nats: NatsServer, as_admin: NatsClient
) -> None:
    """The SUCCEEDED-with-forged-metrics and the attempt-2147483647 `started` events came
    from a process with no credentials: with authentication it cannot even connect. An
    event a Trainer sends for an attempt Jobs did not dispatch is the Jobs service's
    to ignore (tests/jobs)."""
    before = await stream_messages(as_admin, JOB_EVENTS_STREAM)
    await refused_connect(secured_nats)
    succeeded = dispatch_pb2.JobEvent(
        job_id="job-1",
        attempt=1,
        succeeded=dispatch_pb2.JobEvent.Succeeded(metrics={"accuracy": 1.0}),
    ).SerializeToString()
    trainer = await login(secured_nats, nats_access.TRAINER)
    await trainer.js.publish(job_events_subject("job-1"), succeeded)
    await trainer.nc.close()
    assert await stream_messages(as_admin, JOB_EVENTS_STREAM) == before + 1


# -- forged work ----------------------------------------------------------------------------


async def test_only_jobs_publishes_training_requests(
    as_trainer: Probe, as_jobs: Probe, as_admin: NatsClient
) -> None:
    before = await stream_messages(as_admin, TRAINING_REQUESTS_STREAM)
    request = dispatch_pb2.TrainingRequest(job_id="injected").SerializeToString()
    with pytest.raises(nats.errors.TimeoutError):
        await as_trainer.js.publish(TRAINING_REQUESTS_SUBJECT, request)
    await as_trainer.violation("publish", TRAINING_REQUESTS_SUBJECT)
    await as_jobs.js.publish(TRAINING_REQUESTS_SUBJECT, request)
    assert await stream_messages(as_admin, TRAINING_REQUESTS_STREAM) == before + 1


async def test_only_jobs_writes_cancellations(
    as_trainer: Probe, as_jobs: Probe, as_admin: NatsClient
) -> None:
    subject = f"$KV.{CANCELLATIONS_BUCKET}.victim-job"
    with pytest.raises(nats.errors.TimeoutError):
        await as_trainer.js.publish(subject, b"CANCEL_REQUESTED")
    await as_trainer.violation("publish", subject)
    flags = await as_admin.jetstream().key_value(CANCELLATIONS_BUCKET)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await flags.get("victim-job")
    # The Trainer still reads the bucket it watches; Jobs writes it.
    trainer_view = await as_trainer.js.key_value(CANCELLATIONS_BUCKET)
    await (await as_jobs.js.key_value(CANCELLATIONS_BUCKET)).put("own-job", b"CANCEL_REQUESTED")
    assert (await trainer_view.get("own-job")).value == b"CANCEL_REQUESTED"


@pytest.mark.parametrize(
    ("stream", "subject"),
    [
        (TRAINING_REQUESTS_STREAM, TRAINING_REQUESTS_SUBJECT),
        (JOB_EVENTS_STREAM, job_events_subject("job-kept")),
    ],
)
async def test_no_service_purges_or_deletes_a_stream(
    stream: str, subject: str, as_trainer: Probe, as_jobs: Probe, as_admin: NatsClient
) -> None:
    # A message of its own in the stream under test, so that "nothing was purged"
    # is shown on a non-empty stream whatever ran before.
    await as_jobs.js.publish(subject, b"kept")
    before = await stream_messages(as_admin, stream)
    for probe in (as_trainer, as_jobs):
        with pytest.raises(nats.errors.TimeoutError):
            await probe.js.purge_stream(stream)
        await probe.violation("publish", f"$JS.API.STREAM.PURGE.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await probe.js.delete_stream(stream)
        await probe.violation("publish", f"$JS.API.STREAM.DELETE.{stream}")
    assert await stream_messages(as_admin, stream) == before > 0


async def test_only_jobs_announces_changes(
    as_trainer: Probe, as_jobs: Probe, as_admin: NatsClient
) -> None:
    subject = job_changes_subject("watched-job")
    seen: list[bytes] = []

    async def on_change(message: Msg) -> None:
        seen.append(message.data)

    await as_admin.subscribe(subject, cb=on_change)
    await as_admin.flush()
    await as_trainer.nc.publish(subject, b"forged SUCCEEDED")
    await as_trainer.nc.flush()
    await as_trainer.violation("publish", subject)
    await as_jobs.nc.publish(subject, b"real")
    await as_jobs.nc.flush()
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [b"real"]


async def test_only_trainers_take_the_champion_lock(
    as_trainer: Probe, as_jobs: Probe, as_admin: NatsClient
) -> None:
    subject = f"$KV.{LOCKS_BUCKET}.champion.iris-species"
    with pytest.raises(nats.errors.TimeoutError):
        await as_jobs.js.publish(subject, b"squatter")
    await as_jobs.violation("publish", subject)
    with pytest.raises(nats.errors.TimeoutError):
        await as_jobs.js.key_value(LOCKS_BUCKET)
    locks = await as_trainer.js.key_value(LOCKS_BUCKET)
    revision = await locks.create("champion.iris-species", b"trainer-1")
    assert (await locks.get("champion.iris-species")).value == b"trainer-1"
    await locks.delete("champion.iris-species", last=revision)


# -- reading what is not one's own ----------------------------------------------------------


async def test_jobs_cannot_read_training_requests(as_jobs: Probe) -> None:
    await as_jobs.nc.subscribe(TRAINING_REQUESTS_SUBJECT)
    await as_jobs.nc.flush()
    await as_jobs.violation("subscription", TRAINING_REQUESTS_SUBJECT)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{TRAINING_REQUESTS_STREAM}.{TRAINERS_CONSUMER}"
    await as_jobs.nc.publish(next_subject, b"1", reply=as_jobs.nc.new_inbox())
    await as_jobs.nc.flush()
    await as_jobs.violation("publish", next_subject)


async def test_trainers_cannot_read_events_or_anyone_elses_replies(as_trainer: Probe) -> None:
    for subject in (
        "modelyard.jobs.*.events",
        "modelyard.>",
        "_INBOX.>",
        f"{inbox_prefix(nats_access.JOBS)}.>",
    ):
        await as_trainer.nc.subscribe(subject)
        await as_trainer.nc.flush()
        await as_trainer.violation("subscription", subject)
    for subject in (
        f"$JS.API.CONSUMER.MSG.NEXT.{JOB_EVENTS_STREAM}.{JOBS_EVENTS_CONSUMER}",
        f"$JS.API.CONSUMER.CREATE.{JOB_EVENTS_STREAM}.spy",
    ):
        await as_trainer.nc.publish(subject, b"{}", reply=as_trainer.nc.new_inbox())
        await as_trainer.nc.flush()
        await as_trainer.violation("publish", subject)


# -- the services themselves ----------------------------------------------------------------


async def test_a_service_with_wrong_credentials_stops_naming_its_user(
    secured_nats: NatsServer, tmp_path: Path
) -> None:
    process = ManagedProcess(
        name="jobs",
        command=[sys.executable, "-m", "services.jobs"],
        env={
            "MODELYARD_STATE_DIR": str(tmp_path / "state"),
            "MODELYARD_JOBS_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
            **secured_nats.env("JOBS", nats_access.JOBS),
            "MODELYARD_JOBS_NATS_PASSWORD": "wrong",
            "MODELYARD_JOBS_NATS_CONNECT_TIMEOUT_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
        },
        log_path=tmp_path / "jobs.log",
    ).start()
    assert process.popen is not None
    try:
        exit_code = await asyncio.to_thread(process.popen.wait, 60)
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert exit_code == 1, log
    assert "refused the credentials of user modelyard-jobs" in log
    assert "MODELYARD_JOBS_NATS_USER" in log
