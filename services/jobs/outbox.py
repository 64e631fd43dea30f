"""What the Jobs service sends to NATS, as outbox rows.

Every change that must reach NATS is written as an outbox row in the same
transaction as the change itself; the relay (relay.py) publishes it. So a crash
between the commit and the publish loses nothing: the row is still there when
a relay next looks. Publishing a row twice is harmless: JetStream drops a
message whose `Nats-Msg-Id` it saw within the stream's duplicate window, and a
cancel flag is a key-value put.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent, TrainingRequest


class OutboxKind(StrEnum):
    # TrainingRequest → modelyard.training.requests, Nats-Msg-Id = job id.
    TRAINING_REQUEST = "training_request"
    # JobEvent (source "jobs") → modelyard.jobs.<job_id>.events, Nats-Msg-Id = event id.
    JOB_EVENT = "job_event"
    # Cancellation flag: key = job id in the cancellations KV bucket, value = the reason.
    CANCEL_FLAG = "cancel_flag"


@dataclass(frozen=True)
class OutboxEntry:
    kind: OutboxKind
    job_id: str
    msg_id: str
    payload: bytes


def training_request_entry(request: TrainingRequest) -> OutboxEntry:
    return OutboxEntry(
        OutboxKind.TRAINING_REQUEST, request.job_id, request.job_id, request.SerializeToString()
    )


def job_event_entry(event: JobEvent) -> OutboxEntry:
    return OutboxEntry(
        OutboxKind.JOB_EVENT, event.job_id, event.event_id, event.SerializeToString()
    )


def cancel_flag_entry(job_id: str, reason: str) -> OutboxEntry:
    return OutboxEntry(OutboxKind.CANCEL_FLAG, job_id, job_id, reason.encode())
