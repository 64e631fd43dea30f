"""The Trainer's own Prometheus metrics (RPC metrics come from runtime)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

ATTEMPTS = Counter(
    "modelyard_trainer_attempts",
    "Job attempts finished, by what became of the request message "
    "(ack: the job reached a final state; retry_later, handed_back: it will run again).",
    ["disposition"],
)
ATTEMPT_SECONDS = Histogram(
    "modelyard_trainer_attempt_seconds",
    "Wall time of a job attempt, from pick-up to its final event.",
    buckets=DURATION_BUCKETS,
)
TRAINING_SECONDS = Histogram(
    "modelyard_trainer_training_seconds",
    "Time spent boosting (LightGBM), by task.",
    ["task"],
    buckets=DURATION_BUCKETS,
)
REQUESTS_REFUSED = Counter(
    "modelyard_trainer_requests_refused",
    "TrainingRequests terminated without training, by reason "
    "(invalid_job_id: not an id Jobs makes; unknown_job: Jobs has no such job; "
    "unreadable: not a TrainingRequest).",
    ["reason"],
)
RUNNING_JOBS = Gauge("modelyard_trainer_running_jobs", "Jobs this Trainer is running now.")
