"""Who may do what on NATS: one identity per kind of process, and the subjects each may use.

This table is the single source of the NATS permissions. The local stack and the
tests render it into the nats-server configuration they start (`render_authorization`
with generated passwords), and deploy/nats/nats-server.conf is the same rendering with
each password read from an environment variable: `python -m runtime.nats_access`
writes it, and a test keeps the file equal to its output.

The rules, from the attacks they close:
- only Jobs publishes training requests, writes cancellations and announces `.changes`;
- only Trainers (and Jobs, for the outcomes it decides itself) publish job events, and
  only Trainers take the champion lock;
- each identity reads only through its own durable consumer (or, for key-value
  buckets, the buckets it needs), and replies reach it on its own inbox prefix, so no
  identity can subscribe to another's replies (`_INBOX.>` is nobody's but the admin's);
- streams and buckets are created, changed, purged and deleted by the setup identity
  alone (`runtime.nats_setup`); services only look them up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    JOB_CHANGES_SUBJECTS,
    JOB_EVENTS_STREAM,
    JOB_EVENTS_SUBJECTS,
    JOBS_EVENTS_CONSUMER,
    LOCKS_BUCKET,
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    inbox_prefix,
)

ADMIN = "modelyard-admin"
JOBS = "modelyard-jobs"
TRAINER = "modelyard-trainer"

API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _stream_info(stream: str) -> tuple[str, ...]:
    return (f"{API}.STREAM.INFO.{stream}",)


def _durable_consumer(stream: str, consumer: str) -> tuple[str, ...]:
    """Create (both API forms), look up, pull from and acknowledge on one durable consumer."""
    return (
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _bucket_reader(bucket: str) -> tuple[str, ...]:
    """Open a key-value bucket, get keys and watch them (an ordered, ephemeral consumer)."""
    stream = f"KV_{bucket}"
    return (
        *_stream_info(stream),
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _bucket_writer(bucket: str) -> tuple[str, ...]:
    return (*_bucket_reader(bucket), f"$KV.{bucket}.>")


def _permissions() -> dict[str, Permissions]:
    return {
        ADMIN: Permissions(publish=(">",), subscribe=(">",)),
        JOBS: Permissions(
            publish=(
                TRAINING_REQUESTS_SUBJECT,
                JOB_CHANGES_SUBJECTS,
                # The outbox relay publishes the events Jobs itself decides (a deadline
                # passed, a queued job cancelled): Jobs owns the state they change anyway.
                JOB_EVENTS_SUBJECTS,
                *_stream_info(TRAINING_REQUESTS_STREAM),
                # Queue depth for the metrics: the Trainers' consumer, read only.
                f"{API}.CONSUMER.INFO.{TRAINING_REQUESTS_STREAM}.{TRAINERS_CONSUMER}",
                *_stream_info(JOB_EVENTS_STREAM),
                *_durable_consumer(JOB_EVENTS_STREAM, JOBS_EVENTS_CONSUMER),
                *_bucket_writer(CANCELLATIONS_BUCKET),
            ),
            # Watches follow a job's events and changes as they are published.
            subscribe=(inbox_prefix(JOBS) + ".>", JOB_EVENTS_SUBJECTS, JOB_CHANGES_SUBJECTS),
        ),
        TRAINER: Permissions(
            publish=(
                JOB_EVENTS_SUBJECTS,
                *_stream_info(TRAINING_REQUESTS_STREAM),
                *_durable_consumer(TRAINING_REQUESTS_STREAM, TRAINERS_CONSUMER),
                *_stream_info(JOB_EVENTS_STREAM),
                *_bucket_reader(CANCELLATIONS_BUCKET),
                *_bucket_writer(LOCKS_BUCKET),
            ),
            subscribe=(inbox_prefix(TRAINER) + ".>",),
        ),
    }


PERMISSIONS: Mapping[str, Permissions] = _permissions()
SERVICE_IDENTITIES = (JOBS, TRAINER)


def password_variable(user: str) -> str:
    """The environment variable nats-server reads a user's password from, in deploy/."""
    role = user.removeprefix("modelyard-").upper()
    return f"MODELYARD_NATS_{role}_PASSWORD"


def render_authorization(passwords: Mapping[str, str] | None = None) -> str:
    """The nats-server `authorization` block: every identity with its permissions.

    With `passwords` (user -> password) they are written in; without, each is a
    reference to the environment variable `password_variable(user)`, which nats-server
    resolves at start. No user means no anonymous access: nats-server refuses a
    client without credentials once any user is configured.
    """
    lines = ["authorization {", "  users = ["]
    for user, permissions in PERMISSIONS.items():
        password = (
            json.dumps(passwords[user]) if passwords is not None else f"${password_variable(user)}"
        )
        lines += [
            f"    {{user: {json.dumps(user)}, password: {password}, permissions: {{",
            f"      publish: {{allow: {json.dumps(list(permissions.publish))}}}",
            f"      subscribe: {{allow: {json.dumps(list(permissions.subscribe))}}}",
            "    }}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def deploy_config() -> str:
    """deploy/nats/nats-server.conf: the authorization block, passwords from the environment."""
    variables = ", ".join(password_variable(user) for user in PERMISSIONS)
    return (
        "# Generated by `python -m runtime.nats_access > deploy/nats/nats-server.conf` from\n"
        "# runtime/nats_access.py; do not edit. nats-server reads each password from the\n"
        f"# environment: {variables}.\n" + render_authorization()
    )


if __name__ == "__main__":
    print(deploy_config(), end="")
