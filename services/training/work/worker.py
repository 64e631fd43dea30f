"""The Trainer's worker: a pull consumer of training requests.

One durable consumer (`modelyard-trainers`) is shared by every Trainer. A
Trainer fetches a message only when it has a free slot, sends `in_progress()`
every ack_wait/3 while the job runs, watches the job's cancellation key, and
acknowledges only after it has published the job's final event. The message's
delivery count is the job's attempt; past `max_attempts` the job fails with
ATTEMPTS_EXHAUSTED without training.

A job that hits a transient error (MLflow or DatasetService unreachable) is
handed back with a delay and tried again by the next delivery; on its last
attempt it fails with that error instead. On SIGTERM the worker stops
fetching; a running job has the shutdown grace period to finish, after which
it stops at its next boosting iteration and is handed back (`nak`) so that
another Trainer takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind

from modelyard.dispatch.v1 import dispatch_pb2
from runtime import limits
from runtime.logs import error_fields, log_context
from runtime.messaging import (
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    cancellations,
)
from runtime.tracing import context_from_headers, tracer
from services.training import metrics
from services.training.settings import TrainerSettings
from services.training.work.events import EventsUnavailable
from services.training.work.jobs_check import JobDirectory, JobsUnavailable
from services.training.work.runner import Disposition, JobControl, JobRunner

logger = logging.getLogger("modelyard.trainer.worker")

FETCH_TIMEOUT_SECONDS = 1.0
ACK_TIMEOUT_SECONDS = 5.0
HELPER_STOP_SECONDS = 5.0
HAND_BACK_WAIT_SECONDS = 30.0


class WorkerState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"


class TrainerWorker:
    def __init__(
        self,
        settings: TrainerSettings,
        nc: NatsClient,
        runner: JobRunner,
        jobs: JobDirectory,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._runner = runner
        self._slots = asyncio.Semaphore(settings.worker_slots)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, JobControl] = {}
        self._state = WorkerState.RUNNING
        self._loop_task: asyncio.Task[None] | None = None
        self._cancellations: KeyValue | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._fetching = False

    async def start(self) -> None:
        self._cancellations = await cancellations(self._js)
        self._subscription = await self._subscribe()
        self._loop_task = asyncio.create_task(self._fetch_loop(), name="trainer-fetch")
        logger.info(
            "worker started",
            extra={"slots": self._settings.worker_slots, "consumer": TRAINERS_CONSUMER},
        )

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=TRAINERS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait_seconds,
            max_deliver=-1,  # the Trainer bounds attempts itself
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=TRAINING_REQUESTS_SUBJECT,
        )
        try:
            return await self._js.pull_subscribe(
                TRAINING_REQUESTS_SUBJECT,
                durable=TRAINERS_CONSUMER,
                stream=TRAINING_REQUESTS_STREAM,
                config=config,
            )
        except BadRequestError:
            # Another Trainer created it at the same moment (or with other settings): use it.
            return await self._js.pull_subscribe_bind(
                durable=TRAINERS_CONSUMER, stream=TRAINING_REQUESTS_STREAM
            )

    async def stop(self, grace_seconds: float) -> None:
        """Stop fetching; let running jobs finish within the grace, then hand them back."""
        self._state = WorkerState.STOPPING
        await self._stop_fetching()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for control in list(self._running.values()):
            control.stop("shutdown")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=HAND_BACK_WAIT_SECONDS)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        logger.info("worker stopped", extra={"unfinished_jobs": len(self._tasks)})

    async def _stop_fetching(self) -> None:
        """End the fetch loop; a pull in flight is let finish so no message is left unseen."""
        if self._loop_task is None:
            return
        if self._fetching:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._loop_task), FETCH_TIMEOUT_SECONDS + 2)
        self._loop_task.cancel()  # waiting for a free slot: nothing to lose
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task

    def _stopping(self) -> bool:
        return self._state is not WorkerState.RUNNING

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    # -- fetching --------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._subscription is not None
        while self._state is WorkerState.RUNNING:
            await self._slots.acquire()
            messages: list[Msg] = []
            try:
                if not self._stopping():
                    self._fetching = True
                    messages = await self._subscription.fetch(1, timeout=FETCH_TIMEOUT_SECONDS)
            except nats.errors.TimeoutError:
                pass
            except Exception as error:  # NATS reconnecting, consumer being recreated, ...
                logger.warning("fetch failed", extra=error_fields(error))
                await asyncio.sleep(1.0)
            finally:
                self._fetching = False
            if not messages:
                self._slots.release()
                continue
            for message in messages:
                if self._stopping():
                    await _settle(message, Disposition.RETRY_NOW, 0.0)  # fetched while stopping
                    self._slots.release()
                    continue
                task = asyncio.create_task(self._process(message))
                self._tasks.add(task)
                task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("job task failed", exc_info=task.exception())

    # -- one message ---------------------------------------------------------------------

    async def _process(self, message: Msg) -> None:
        try:
            request = dispatch_pb2.TrainingRequest.FromString(message.data)
        except Exception:
            request = dispatch_pb2.TrainingRequest()
        if not request.job_id:
            logger.error("unreadable training request dropped", extra={"bytes": len(message.data)})
            metrics.REQUESTS_REFUSED.labels(reason="unreadable").inc()
            await message.term()
            return
        if limits.RESOURCE_ID.fullmatch(request.job_id) is None:
            # Jobs makes no such id, and it would become part of the events subject, where
            # '.', '*' and '>' mean something else: terminated, so it is not redelivered.
            logger.error(
                "training request with an invalid job id terminated",
                extra={"job_id": limits.echo(request.job_id, 80)},
            )
            metrics.REQUESTS_REFUSED.labels(reason="invalid_job_id").inc()
            await message.term()
            return
        attempt = int(message.metadata.num_delivered)
        sequence = str(message.metadata.sequence.stream)
        span = tracer().start_as_current_span(
            "train job",
            context=context_from_headers(message.headers),
            kind=SpanKind.CONSUMER,
            attributes={"modelyard.job_id": request.job_id, "modelyard.attempt": attempt},
        )
        with (
            log_context(job_id=request.job_id, attempt=str(attempt), stream_sequence=sequence),
            span,
        ):
            try:
                disposition = await self._attempt(message, request, attempt)
            except EventsUnavailable as error:
                logger.warning(
                    "events cannot be published; retrying later", extra=error_fields(error)
                )
                disposition = Disposition.RETRY_LATER
            await _settle(message, disposition, self._settings.retry_delay(attempt))

    async def _attempt(
        self, message: Msg, request: dispatch_pb2.TrainingRequest, attempt: int
    ) -> Disposition:
        job_id = request.job_id
        try:
            if not await self._jobs.knows(job_id, scoring=request.HasField("scoring")):
                logger.error("training request for a job Jobs does not know terminated")
                metrics.REQUESTS_REFUSED.labels(reason="unknown_job").inc()
                return Disposition.TERMINATE
        except JobsUnavailable as error:
            logger.warning(
                "cannot ask Jobs about the job; retrying later", extra=error_fields(error)
            )
            return Disposition.RETRY_LATER
        if attempt > self._settings.max_attempts:
            return await self._runner.exhausted(request, attempt)
        if await self._cancel_flag_set(job_id):
            return await self._runner.cancelled_before_start(request, attempt)
        control = JobControl(deadline=time.monotonic() + self._max_run_seconds(request))
        self._running[job_id] = control
        metrics.RUNNING_JOBS.set(len(self._running))
        assert self._cancellations is not None
        cancel_watch = CancelWatch(self._cancellations, job_id, control)
        helpers = [
            asyncio.create_task(self._heartbeat(message)),
            asyncio.create_task(cancel_watch.run()),
            asyncio.create_task(self._enforce_deadline(control)),
        ]
        try:
            return await self._runner.run(request, attempt, control)
        finally:
            await cancel_watch.close()
            for helper in helpers:
                helper.cancel()
            # Bounded: a task that swallowed its cancellation must not hold the slot.
            _, stuck = await asyncio.wait(helpers, timeout=HELPER_STOP_SECONDS)
            if stuck:
                logger.warning("job helpers did not stop", extra={"stuck": len(stuck)})
            self._running.pop(job_id, None)
            metrics.RUNNING_JOBS.set(len(self._running))

    def _max_run_seconds(self, request: dispatch_pb2.TrainingRequest) -> float:
        asked = request.max_run_duration.ToTimedelta().total_seconds()
        chosen = asked if asked > 0 else self._settings.default_max_run_duration_seconds
        limit = self._settings.max_run_duration_limit_seconds
        if chosen > limit:
            # Jobs refuses such a job with the same limit; only a request published by
            # something else (or a Jobs configured otherwise) gets here.
            logger.warning(
                "max_run_duration above the limit; capped",
                extra={"asked_seconds": chosen, "limit_seconds": limit},
            )
        return min(chosen, limit)

    async def _heartbeat(self, message: Msg) -> None:
        interval = self._settings.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await message.in_progress()
            except Exception as error:
                logger.warning("heartbeat failed", extra=error_fields(error))

    async def _cancel_flag_set(self, job_id: str) -> bool:
        assert self._cancellations is not None
        try:
            entry = await self._cancellations.get(job_id)
        except KeyNotFoundError:
            return False
        return entry.value is not None

    async def _enforce_deadline(self, control: JobControl) -> None:
        await asyncio.sleep(max(0.0, control.deadline - time.monotonic()))
        control.stop("deadline")


class CancelWatch:
    """Stops a job when its key appears in the cancellations bucket.

    Ended by `close()`, which stops the KV watcher itself: nats-py can swallow a
    task cancellation that lands while a watch is being set up, so cancelling
    the task alone may leave it waiting forever.
    """

    def __init__(self, bucket: KeyValue, job_id: str, control: JobControl) -> None:
        self._bucket = bucket
        self._job_id = job_id
        self._control = control
        self._watcher: KeyValue.KeyWatcher | None = None
        self._closed = False

    async def run(self) -> None:
        while not self.closed():
            try:
                self._watcher = await self._bucket.watch(self._job_id)
                if self.closed():
                    break
                async for entry in self._watcher:
                    if entry is not None and entry.operation is None:
                        logger.info("cancel requested")
                        self._control.stop("cancelled")
                        return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # NATS reconnecting: watch again
                logger.warning("cancel watch failed; retrying", extra=error_fields(error))
                await asyncio.sleep(1.0)
            finally:
                await self._stop_watcher()

    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        await self._stop_watcher()

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(watcher.stop(), HELPER_STOP_SECONDS)  # type: ignore[no-untyped-call]


async def _settle(message: Msg, disposition: Disposition, retry_delay: float) -> None:
    try:
        if disposition is Disposition.ACK:
            # Confirmed by the server: a lost ack would deliver the job again.
            await message.ack_sync(timeout=ACK_TIMEOUT_SECONDS)
        elif disposition is Disposition.RETRY_LATER:
            await message.nak(delay=retry_delay)
        elif disposition is Disposition.TERMINATE:
            await message.term()
        else:
            await message.nak()
    except Exception as error:  # the message comes back after ack_wait; attempts handle it
        logger.warning("could not settle message", extra=error_fields(error))


def training_executor(slots: int) -> ThreadPoolExecutor:
    """Threads for training and MLflow work: one per slot, plus room for bookkeeping calls."""
    return ThreadPoolExecutor(2 * max(1, slots) + 1, thread_name_prefix="training")
