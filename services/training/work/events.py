"""JobEvents the Trainer publishes (dispatch.proto), on `modelyard.jobs.<job_id>.events`.

Each event has a fresh uuid4 hex `event_id`, also sent as `Nats-Msg-Id`, so a
publish retried after a lost acknowledgement is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import scoring_job_pb2, training_job_pb2
from runtime.logs import error_fields
from runtime.messaging import job_events_subject
from runtime.tracing import headers_with_context

logger = logging.getLogger("modelyard.trainer.events")

PUBLISH_TIMEOUT_SECONDS = 5.0
PUBLISH_ATTEMPTS = 6


def trainer_source() -> str:
    return f"trainer/{socket.gethostname()}-{os.getpid()}"


class EventsUnavailable(Exception):
    """An event could not be stored in JetStream, even after retries."""


class EventPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        source: str | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._js = js
        self.source = source or trainer_source()
        self._redact = redact or (lambda text: text)

    async def started(
        self,
        job_id: str,
        attempt: int,
        task_detection: training_job_pb2.TaskDetection | None = None,
        mlflow: training_job_pb2.MlflowRun | None = None,
    ) -> None:
        started = dispatch_pb2.JobEvent.Started(task_detection=task_detection, mlflow=mlflow)
        await self.publish(self._event(job_id, attempt, started=started))

    async def progress(
        self, job_id: str, attempt: int, progress: training_job_pb2.TrainingProgress
    ) -> None:
        await self.publish(self._event(job_id, attempt, progress=progress), attempts=1)

    async def scoring_progress(
        self, job_id: str, attempt: int, progress: scoring_job_pb2.ScoringProgress
    ) -> None:
        await self.publish(self._event(job_id, attempt, scoring_progress=progress), attempts=1)

    async def trial(self, job_id: str, attempt: int, trial: training_job_pb2.Trial) -> None:
        """A search's trial; Jobs stores it for ListTrials. Not worth failing a job over."""
        try:
            await self.publish(self._event(job_id, attempt, trial=trial), attempts=3)
        except EventsUnavailable as error:
            logger.warning("trial event lost", extra=error_fields(error))

    async def succeeded(
        self, job_id: str, attempt: int, succeeded: dispatch_pb2.JobEvent.Succeeded
    ) -> None:
        await self.publish(self._event(job_id, attempt, succeeded=succeeded))

    async def failed(
        self,
        job_id: str,
        attempt: int,
        error: status_pb2.Status,
        mlflow: training_job_pb2.MlflowRun | None = None,
    ) -> None:
        error.message = self._redact(error.message)
        failed = dispatch_pb2.JobEvent.Failed(error=error, mlflow=mlflow)
        await self.publish(self._event(job_id, attempt, failed=failed))

    async def cancelled(
        self, job_id: str, attempt: int, mlflow: training_job_pb2.MlflowRun | None = None
    ) -> None:
        cancelled = dispatch_pb2.JobEvent.Cancelled(mlflow=mlflow)
        await self.publish(self._event(job_id, attempt, cancelled=cancelled))

    def _event(self, job_id: str, attempt: int, **kind: object) -> dispatch_pb2.JobEvent:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return dispatch_pb2.JobEvent(
            job_id=job_id,
            attempt=attempt,
            event_time=now,
            source=self.source,
            event_id=uuid.uuid4().hex,
            **kind,  # type: ignore[arg-type]
        )

    async def publish(self, event: dispatch_pb2.JobEvent, attempts: int = PUBLISH_ATTEMPTS) -> None:
        """JetStream publish, retried while NATS reconnects; raises when it never lands."""
        headers: Mapping[str, str] = headers_with_context({"Nats-Msg-Id": event.event_id})
        for attempt in range(1, attempts + 1):
            try:
                await self._js.publish(
                    job_events_subject(event.job_id),
                    event.SerializeToString(),
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                    headers=dict(headers),
                )
                logger.debug("event published", extra={"kind": event.WhichOneof("kind")})
                return
            except (TimeoutError, NatsError) as error:
                if attempt == attempts:
                    raise EventsUnavailable(f"could not publish a JobEvent: {error!r}") from error
                logger.warning(
                    "event publish failed; retrying",
                    extra={"kind": event.WhichOneof("kind"), **error_fields(error)},
                )
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
