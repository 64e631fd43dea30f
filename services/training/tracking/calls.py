"""How the Trainer calls MLflow: one client and one thread pool per process, each
step timed and traced, and every failure to reach MLflow one exception.

Every call to an MLflow server with basic auth costs a password check on the
server (tens to hundreds of milliseconds), so independent calls run in parallel
(`submit`) and each step is timed (`MlflowTimings`), so that logs and
benchmarks can say where the time goes. Blocking: call from a worker thread,
never from the event loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from opentelemetry.trace import SpanKind

from runtime.tracing import tracer

UPLOAD_THREADS = 6


class MlflowUnavailable(Exception):
    """An MLflow call failed; the job can be tried again later."""


class MlflowPermissionDenied(Exception):
    """MLflow refused the Trainer's user: the experiment or registered model is another
    MLflow user's (the Trainer may use only its own). Trying again cannot help."""


class MlflowTimings:
    """Seconds spent and calls made per kind of MLflow step, summed (thread-safe).

    Steps run in parallel overlap: their seconds add up to more than the wall time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with tracer().start_as_current_span(f"mlflow {name}", kind=SpanKind.CLIENT):
                yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._seconds[name] = self._seconds.get(name, 0.0) + elapsed
                self._calls[name] = self._calls.get(name, 0) + 1

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {name: round(seconds, 4) for name, seconds in self._seconds.items()}

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)


class MlflowCalls:
    """The MLflow client of the process and the pool its parallel calls run on."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="mlflow")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(
        self, timings: MlflowTimings, step: str, call: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Run `call` on the pool as a timed step."""

        def timed() -> Any:
            with self.step(timings, step):
                return call(*args, **kwargs)

        # The caller's context goes along: log ids, and the job's trace for the step's span.
        return self._pool.submit(contextvars.copy_context().run, timed)

    def submit_untimed(self, call: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `call` on the pool, within a step the caller times itself."""
        return self._pool.submit(contextvars.copy_context().run, call, *args)

    @contextlib.contextmanager
    def step(self, timings: MlflowTimings, step: str) -> Iterator[None]:
        """Time a step; turn any failure to reach or use MLflow into MlflowUnavailable,
        a refusal of the Trainer's user into MlflowPermissionDenied."""
        with timings.step(step):
            try:
                yield
            except (MlflowUnavailable, MlflowPermissionDenied):
                raise
            except MlflowException as error:
                if error.error_code == "PERMISSION_DENIED":
                    raise MlflowPermissionDenied(f"MLflow {step} was refused") from error
                raise MlflowUnavailable(f"MLflow {step} failed: {error}") from error
            except OSError as error:
                raise MlflowUnavailable(f"MLflow {step} failed: {error}") from error
