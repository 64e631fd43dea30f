"""Limits that hold across services are defined once (`runtime/limits.py`) and every
service applies the same one: a value one service accepts, the next one accepts too.

These tests call each service's own check, so they fail when a service grows a
limit of its own again.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from modelyard.dataset.v1 import dataset_pb2
from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest
from runtime import limits
from runtime.errors import ServiceError
from services.dataset.validation import validate_request_id as dataset_request_id
from services.jobs.settings import JobsSettings
from services.jobs.validation import validate_create, validate_job_id
from services.training.model.targets import TrainingFailure
from services.training.serving.catalog import validate_model_name as trainer_model_name
from services.training.settings import TrainerSettings
from services.training.tracking.registry import derive_model_name
from services.training.work.runner import job_info

LONGEST_NAME = "m" * limits.MAX_MODEL_NAME_CHARS
MODEL_NAMES = [
    ("iris-species", True),
    ("v1.2_final", True),
    (LONGEST_NAME, True),
    (LONGEST_NAME + "m", False),
    ("-starts-with-dash", False),
    ("has space", False),
    ("name\n", False),  # a `$` regex would let the newline through
    ("ünïcode", False),
]
REQUEST_IDS = [
    ("", True),
    ("retry-7f3a", True),
    ("r" * limits.MAX_REQUEST_ID_CHARS, True),
    ("r" * (limits.MAX_REQUEST_ID_CHARS + 1), False),
    ("tab\there", False),
    ("x" * 100_000, False),
]


def outcome(check: Any, value: str) -> tuple[bool, str | None]:
    try:
        check(value)
    except ServiceError as error:
        return False, error.reason
    return True, None


def jobs_accepts_model_name(name: str) -> bool:
    request = CreateTrainingJobRequest(
        dataset_id="d" * 32, target_column="y", registered_model_name=name
    )
    accepted, reason = outcome(lambda _: validate_create(request, JobsSettings()), name)
    assert reason in (None, "REGISTERED_MODEL_NAME_INVALID")
    return accepted


def trainer_serves_model_name(name: str) -> bool:
    accepted, reason = outcome(trainer_model_name, name)
    assert reason in (None, "MODEL_NAME_INVALID")
    return accepted


def trainer_registers_model_name(name: str) -> bool:
    request = dispatch_pb2.TrainingRequest(
        job_id="j1", dataset_id="d1", target_column="y", registered_model_name=name
    )
    try:
        job_info(request, 1, dataset_pb2.Dataset(dataset_id="d1", display_name="data"))
    except TrainingFailure:
        return False
    return True


@pytest.mark.parametrize(("name", "valid"), MODEL_NAMES)
def test_jobs_and_the_trainer_agree_on_model_names(name: str, valid: bool) -> None:
    assert jobs_accepts_model_name(name) is valid
    assert trainer_registers_model_name(name) is valid
    assert trainer_serves_model_name(name) is valid


def test_a_derived_model_name_is_one_every_service_accepts() -> None:
    derived = derive_model_name("Ä very long dataset name " * 20, "the target")
    assert len(derived) <= limits.MAX_MODEL_NAME_CHARS
    assert jobs_accepts_model_name(derived)
    assert trainer_serves_model_name(derived)


def test_in_a_project_jobs_and_the_trainer_leave_room_for_its_prefix() -> None:
    """Outside `default` the model is registered as `<project>=<name>`: both services take
    the room left from the one limit, and a derived name fits it."""
    project = "a-rather-long-project-name"
    room = limits.MAX_MODEL_NAME_CHARS - len(project) - 1
    assert limits.max_model_name_chars(project) == room
    assert limits.max_model_name_chars("default") == limits.MAX_MODEL_NAME_CHARS

    def jobs_accepts(name: str) -> bool:
        request = CreateTrainingJobRequest(
            dataset_id="d" * 32, target_column="y", registered_model_name=name
        )
        accepted, reason = outcome(lambda _: validate_create(request, JobsSettings(), project), "")
        assert reason in (None, "REGISTERED_MODEL_NAME_INVALID")
        return accepted

    def trainer_registers(name: str, dataset_name: str = "data") -> str | None:
        request = dispatch_pb2.TrainingRequest(
            job_id="j1", dataset_id="d1", target_column="y", registered_model_name=name
        )
        request.project_id = project
        dataset = dataset_pb2.Dataset(dataset_id="d1", display_name=dataset_name)
        try:
            return job_info(request, 1, dataset).model_name
        except TrainingFailure:
            return None

    for name, fits in (("m" * room, True), ("m" * (room + 1), False)):
        assert jobs_accepts(name) is fits
        assert (trainer_registers(name) is not None) is fits
    derived = trainer_registers("", dataset_name="Ä very long dataset name " * 20)
    assert derived is not None
    assert len(derived) <= limits.MAX_MODEL_NAME_CHARS
    assert derived.startswith(f"{project}=")


@pytest.mark.parametrize(("request_id", "valid"), REQUEST_IDS)
def test_every_create_rpc_checks_request_ids_the_same_way(request_id: str, valid: bool) -> None:
    def jobs(value: str) -> None:
        validate_create(
            CreateTrainingJobRequest(dataset_id="d" * 32, target_column="y", request_id=value),
            JobsSettings(),
        )

    expected = (True, None) if valid else (False, "REQUEST_ID_INVALID")
    assert outcome(jobs, request_id) == expected
    assert outcome(dataset_request_id, request_id) == expected


def test_jobs_refuses_what_the_trainer_would_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """One variable sets the limit of both; a job Jobs accepts is never shortened."""
    monkeypatch.setenv("MODELYARD_MAX_RUN_DURATION_LIMIT_SECONDS", "7200")
    monkeypatch.setenv("MODELYARD_DEFAULT_MAX_RUN_DURATION_SECONDS", "600")
    jobs, trainer = JobsSettings(), TrainerSettings()
    assert jobs.max_run_duration_limit_seconds == trainer.max_run_duration_limit_seconds == 7200
    assert jobs.default_max_run_duration_seconds == trainer.default_max_run_duration_seconds == 600
    over = CreateTrainingJobRequest(dataset_id="d" * 32, target_column="y")
    over.max_run_duration.seconds = 7201
    with pytest.raises(ServiceError) as refused:
        validate_create(over, jobs)
    assert refused.value.reason == "MAX_RUN_DURATION_TOO_LONG"


def test_the_run_duration_defaults_agree_without_configuration() -> None:
    jobs, trainer = JobsSettings(), TrainerSettings()
    assert jobs.max_run_duration_limit_seconds == trainer.max_run_duration_limit_seconds
    assert jobs.default_max_run_duration_seconds == trainer.default_max_run_duration_seconds


def test_a_default_above_the_limit_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_MAX_RUN_DURATION_LIMIT_SECONDS", "60")
    with pytest.raises(ValueError, match="must not exceed"):
        JobsSettings()


@pytest.mark.parametrize(
    ("job_id", "reason"),
    [("", "JOB_ID_REQUIRED"), ("a.b", "JOB_ID_INVALID"), ("j" * 65, "JOB_ID_INVALID")],
)
def test_resource_ids_are_checked_and_quoted_bounded(job_id: str, reason: str) -> None:
    with pytest.raises(ServiceError) as refused:
        validate_job_id(job_id)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    assert len(refused.value.metadata.get("job_id", "")) <= limits.MAX_ECHO_CHARS + 1


def test_echo_bounds_and_defuses_what_it_quotes() -> None:
    assert limits.echo("short") == "short"
    assert limits.echo("a\x00b\nc") == "a?b?c"
    quoted = limits.echo("x" * 100_000)
    assert len(quoted) == limits.MAX_ECHO_CHARS + 1
    assert quoted.endswith("…")
