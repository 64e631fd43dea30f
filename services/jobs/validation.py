"""Checks of the Jobs service's own inputs, before anything else is asked or stored."""

from __future__ import annotations

from datetime import timedelta

from modelyard.jobs.v1.jobs_service_pb2 import CreateScoringJobRequest, CreateTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import limits
from runtime.access import DEFAULT_PROJECT
from runtime.errors import ServiceError, invalid_argument, not_found
from runtime.limits import check_model_name, check_request_id, check_resource_id, echo
from services.jobs import reasons
from services.jobs.settings import JobsSettings

MAX_PARAMS = 100
MAX_PARAM_KEY = 128
MAX_PARAM_VALUE = 1024
MAX_TARGET_COLUMN = 10_000
# A dataset reference: an id, or a display name (200 characters at most) with "@version".
MAX_DATASET_REFERENCE = 240
TASKS = frozenset(TrainingJob.Task.values())
MAX_PASS_THROUGH_COLUMNS = 1000
MAX_COLUMN_NAME = 10_000
MAX_OUTPUT_DISPLAY_NAME = 200  # DatasetService's limit on display names
# Columns a scoring job's output makes itself: `prediction`, `probability_<class>`,
# `flags`, `contribution_…`, `base_value…` (the Trainer's batch/scorer.py).
OUTPUT_COLUMNS = ("prediction", "flags")
OUTPUT_PREFIXES = ("probability_", "contribution_", "base_value")
CreateRequest = CreateTrainingJobRequest | CreateScoringJobRequest


def validate_job_id(job_id: str) -> str:
    return check_resource_id(job_id, "job_id", reasons.JOB_ID_REQUIRED, reasons.JOB_ID_INVALID)


def job_not_found(job_id: str, kind: str = "training") -> ServiceError:
    """NOT_FOUND for a job id that passed `validate_job_id`, whichever RPC asked."""
    return not_found(reasons.JOB_NOT_FOUND, f"{kind} job {job_id} does not exist", job_id=job_id)


def validate_create(
    request: CreateTrainingJobRequest, settings: JobsSettings, project: str = DEFAULT_PROJECT
) -> None:
    """The request of a job of `project` (whose model is registered under its prefix)."""
    _validate_dataset_and_target(request)
    _validate_task(request.task)
    _validate_params(dict(request.params))
    if request.registered_model_name:
        check_model_name(
            request.registered_model_name, reasons.REGISTERED_MODEL_NAME_INVALID, project=project
        )
    check_request_id(request.request_id, reasons.REQUEST_ID_INVALID)
    if request.HasField("max_run_duration"):
        _validate_max_run_duration(request, settings)
    if request.HasField("search"):
        _validate_search(request, settings)


def max_run_duration(request: CreateRequest, settings: JobsSettings) -> timedelta:
    """The job's limit: the request's, else the service default."""
    if request.HasField("max_run_duration"):
        return request.max_run_duration.ToTimedelta()
    return timedelta(seconds=settings.default_max_run_duration_seconds)


def validate_create_scoring(request: CreateScoringJobRequest, settings: JobsSettings) -> None:
    _validate_dataset_reference(request.dataset_id)
    if not request.model_name:
        raise invalid_argument(reasons.MODEL_NAME_INVALID, "model_name is required")
    check_model_name(request.model_name, reasons.MODEL_NAME_INVALID, field="model_name")
    if request.model_version < 0:
        raise invalid_argument(
            reasons.MODEL_VERSION_INVALID,
            "model_version must be positive (or unset for an alias)",
            version=str(request.model_version),
        )
    if request.model_alias and request.model_version:
        raise invalid_argument(
            reasons.MODEL_VERSION_INVALID, "give model_version or model_alias, not both"
        )
    if request.model_alias and not limits.is_model_name(request.model_alias):
        raise invalid_argument(
            reasons.MODEL_VERSION_INVALID,
            f"model_alias must be {limits.MODEL_NAME_RULE}",
            alias=echo(request.model_alias),
        )
    _validate_pass_through(list(request.pass_through_columns))
    if request.output_display_name and (
        len(request.output_display_name) > MAX_OUTPUT_DISPLAY_NAME
        or not request.output_display_name.strip()
    ):
        raise invalid_argument(
            reasons.OUTPUT_DISPLAY_NAME_INVALID,
            f"output_display_name must be 1 to {MAX_OUTPUT_DISPLAY_NAME} characters",
        )
    check_request_id(request.request_id, reasons.REQUEST_ID_INVALID)
    if request.HasField("max_run_duration"):
        _validate_max_run_duration(request, settings)


def _validate_pass_through(columns: list[str]) -> None:
    if len(columns) > MAX_PASS_THROUGH_COLUMNS or len(set(columns)) != len(columns):
        raise invalid_argument(
            reasons.SCORING_COLUMNS_INVALID,
            f"pass_through_columns must be at most {MAX_PASS_THROUGH_COLUMNS} distinct names",
        )
    for name in columns:
        if not name or len(name) > MAX_COLUMN_NAME:
            raise invalid_argument(
                reasons.SCORING_COLUMNS_INVALID,
                f"pass_through_columns names must be 1 to {MAX_COLUMN_NAME} characters",
            )
        if name in OUTPUT_COLUMNS or name.startswith(OUTPUT_PREFIXES):
            raise invalid_argument(
                reasons.SCORING_COLUMN_CONFLICT,
                f"pass-through column {echo(name)!r} would repeat an output column "
                "(prediction, flags, probability_…, contribution_…, base_value…)",
                column=echo(name),
            )


def _validate_dataset_reference(dataset_id: str) -> None:
    if not dataset_id:
        raise invalid_argument(reasons.DATASET_ID_REQUIRED, "dataset_id is required")
    if len(dataset_id) > MAX_DATASET_REFERENCE:
        raise invalid_argument(
            reasons.DATASET_ID_INVALID,
            f"dataset_id (an id, a name or name@version) is longer than "
            f"{MAX_DATASET_REFERENCE} characters",
            dataset_id=echo(dataset_id),
        )


def _validate_dataset_and_target(request: CreateTrainingJobRequest) -> None:
    if not request.dataset_id:
        raise invalid_argument(reasons.DATASET_ID_REQUIRED, "dataset_id is required")
    if len(request.dataset_id) > MAX_DATASET_REFERENCE:
        raise invalid_argument(
            reasons.DATASET_ID_INVALID,
            f"dataset_id (an id, a name or name@version) is longer than "
            f"{MAX_DATASET_REFERENCE} characters",
            dataset_id=echo(request.dataset_id),
        )
    if not request.target_column:
        raise invalid_argument(
            reasons.TARGET_COLUMN_REQUIRED, "target_column is required: the column to predict"
        )
    if len(request.target_column) > MAX_TARGET_COLUMN:
        raise invalid_argument(
            reasons.TARGET_COLUMN_INVALID,
            f"target_column is longer than {MAX_TARGET_COLUMN} characters",
        )


def _validate_task(task: int) -> None:
    if task not in TASKS:
        raise invalid_argument(
            reasons.TASK_INVALID,
            f"task {task} is not one of AUTO, BINARY, MULTICLASS, REGRESSION",
            task=str(task),
        )


def _validate_params(params: dict[str, str]) -> None:
    """Only sizes here: what a parameter may be is the Trainer's allow-list."""
    if len(params) > MAX_PARAMS:
        raise invalid_argument(
            reasons.PARAMS_TOO_MANY, f"{len(params)} params given; at most {MAX_PARAMS} are allowed"
        )
    for key, value in params.items():
        if not key or len(key) > MAX_PARAM_KEY or len(value) > MAX_PARAM_VALUE:
            raise invalid_argument(
                reasons.PARAM_INVALID,
                f"param names must be 1 to {MAX_PARAM_KEY} characters and values at most "
                f"{MAX_PARAM_VALUE}",
                params=key[:MAX_PARAM_KEY],
            )


def _validate_max_run_duration(request: CreateRequest, settings: JobsSettings) -> None:
    duration = request.max_run_duration
    if (
        duration.seconds < 0
        or duration.nanos < 0
        or (duration.seconds == 0 and duration.nanos == 0)
    ):
        raise invalid_argument(
            reasons.MAX_RUN_DURATION_INVALID, "max_run_duration must be positive when given"
        )
    if duration.nanos >= 1_000_000_000:
        raise invalid_argument(reasons.MAX_RUN_DURATION_INVALID, "max_run_duration is malformed")
    limit = settings.max_run_duration_limit_seconds
    if duration.seconds + duration.nanos / 1e9 > limit:
        raise invalid_argument(
            reasons.MAX_RUN_DURATION_TOO_LONG,
            f"max_run_duration may be at most {limit:g} seconds",
            limit_seconds=f"{limit:g}",
        )


def _validate_search(request: CreateTrainingJobRequest, settings: JobsSettings) -> None:
    search = request.search
    if not search.HasField("budget") and not search.max_trials:
        raise invalid_argument(
            reasons.SEARCH_LIMIT_REQUIRED, "a search needs a budget, a max_trials, or both"
        )
    if search.max_trials < 0 or search.max_trials > settings.max_search_trials:
        raise invalid_argument(
            reasons.SEARCH_MAX_TRIALS_INVALID,
            f"search.max_trials must be between 1 and {settings.max_search_trials}",
            limit=str(settings.max_search_trials),
        )
    if not search.HasField("budget"):
        return
    budget = search.budget
    if budget.seconds < 0 or budget.nanos < 0 or budget.nanos >= 1_000_000_000:
        raise invalid_argument(
            reasons.SEARCH_BUDGET_INVALID, "search.budget is malformed or negative"
        )
    seconds = budget.seconds + budget.nanos / 1e9
    if seconds < 1:
        raise invalid_argument(
            reasons.SEARCH_BUDGET_TOO_SHORT,
            "search.budget must be at least 1 second",
            limit_seconds="1",
        )
    limit = settings.max_search_budget_seconds
    if seconds > limit:
        raise invalid_argument(
            reasons.SEARCH_BUDGET_TOO_LONG,
            f"search.budget may be at most {limit:g} seconds",
            limit_seconds=f"{limit:g}",
        )
    run_limit = max_run_duration(request, settings).total_seconds()
    if seconds >= run_limit:
        raise invalid_argument(
            reasons.SEARCH_BUDGET_EXCEEDS_MAX_RUN_DURATION,
            f"search.budget ({seconds:g} s) must be shorter than the job's max_run_duration "
            f"({run_limit:g} s), which also has to cover reading the data and the final model",
            limit_seconds=f"{run_limit:g}",
        )
