"""The predecessor's REST routes, so that its users' scripts keep working.

    POST /datasets/upload        multipart/form-data, the CSV in the field `file`
    POST /models/train           {"dataset_id", "target_col", "task_type"}
    GET  /models/jobs/{job_id}   the job in the predecessor's shape

Each is translated to the gRPC call of its /v1 successor (UploadDataset,
CreateTrainingJob, GetTrainingJob) through the same stubs, behind the same
bearer token; nothing is decided here that the services do not decide for /v1.
The multipart body is parsed as it arrives and the file's bytes go to
UploadDataset as they come, never held whole. Errors keep the predecessor's
shape, `{"detail": ...}` with its status codes, with modelyard's reason beside
it: `{"detail": "Job not found", "reason": "JOB_NOT_FOUND"}`.

Every mapping of fields and states is in the tables of this module; the
README's migration table says the same for people.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from pydantic import BaseModel, ConfigDict, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import HTTP_STATUS_BY_CODE, GatewayError
from gateway.routes import Route
from gateway.streaming import BackendError, CallOptions, send_upload
from modelyard.dataset.v1.dataset_pb2 import Dataset
from modelyard.dataset.v1.dataset_service_pb2 import UploadDatasetHeader, UploadDatasetRequest
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest, GetTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import code_from_number, status_reason

# -- the mapping: one table each ---------------------------------------------------------

# The successor of each route (also named in the OpenAPI document and the README).
SUCCESSORS = {
    ("POST", "/datasets/upload"): ("POST", "/v1/datasets", "UploadDataset"),
    ("POST", "/models/train"): ("POST", "/v1/trainingJobs", "CreateTrainingJob"),
    ("GET", "/models/jobs/{job_id}"): ("GET", "/v1/trainingJobs/{job_id}", "GetTrainingJob"),
}
GRPC_PATHS = {
    "UploadDataset": "/modelyard.dataset.v1.DatasetService/UploadDataset",
    "CreateTrainingJob": "/modelyard.jobs.v1.JobsService/CreateTrainingJob",
    "GetTrainingJob": "/modelyard.jobs.v1.JobsService/GetTrainingJob",
}

# Job state → the predecessor's status. CANCELLING is still running: the Trainer
# stops at its next boosting iteration. CANCELLED was not a status of the
# predecessor: FAILED, with an error_message that says so.
STATUS_OF_STATE = {
    TrainingJob.QUEUED: "PENDING",
    TrainingJob.RUNNING: "RUNNING",
    TrainingJob.CANCELLING: "RUNNING",
    TrainingJob.SUCCEEDED: "COMPLETED",
    TrainingJob.FAILED: "FAILED",
    TrainingJob.CANCELLED: "FAILED",
}
CANCELLED_MESSAGE = "the job was cancelled before it finished (modelyard state CANCELLED)"

# task_type → the task asked for. classification is CLASSIFICATION: BINARY or
# MULTICLASS by the number of distinct labels, never REGRESSION (AUTO could
# choose REGRESSION for a numeric target with many values).
TASK_OF_TASK_TYPE = {
    "classification": TrainingJob.CLASSIFICATION,
    "regression": TrainingJob.REGRESSION,
}
# The task trained (or asked for, until the Trainer has decided) → task_type; an AUTO
# job created through /v1 has none until the Trainer has decided.
TASK_TYPE_OF_TASK = {
    TrainingJob.BINARY: "classification",
    TrainingJob.MULTICLASS: "classification",
    TrainingJob.CLASSIFICATION: "classification",
    TrainingJob.REGRESSION: "regression",
}

# Error details the predecessor's clients match on, by modelyard reason. An id that
# cannot be one was simply not found for the predecessor.
DETAIL_OF_REASON = {
    "DATASET_NOT_FOUND": "Dataset not found",
    "DATASET_ID_INVALID": "Dataset not found",
    "JOB_NOT_FOUND": "Job not found",
    "JOB_ID_INVALID": "Job not found",
}
HTTP_STATUS_OF_REASON = {"DATASET_ID_INVALID": 404, "JOB_ID_INVALID": 404}
BODY_INVALID = "REQUEST_BODY_INVALID"  # the reason beside a 422
FILE_FIELD = "file"
UNNAMED_UPLOAD = "upload.csv"
MAX_DISPLAY_NAME_CHARS = 200


def job_view(job: TrainingJob) -> dict[str, Any]:
    """GetTrainingJob's answer in the predecessor's shape."""
    decided = job.task_detection.task if job.HasField("task_detection") else job.task
    error_message = job.error.message if job.HasField("error") else None
    if job.state == TrainingJob.CANCELLED:
        error_message = CANCELLED_MESSAGE
    return {
        "id": job.job_id,
        "dataset_id": job.dataset_id,
        "target_col": job.target_column,
        "task_type": TASK_TYPE_OF_TASK.get(decided),
        "model_name": job.mlflow.registered_model_name or job.registered_model_name or None,
        "status": STATUS_OF_STATE.get(job.state, "PENDING"),
        "mlflow_run_id": job.mlflow.run_id or None,
        "model_uri": job.mlflow.model_uri or None,
        "metrics": {key: _finite(value) for key, value in sorted(job.metrics.items())},
        "error_message": error_message,
        "created_at": _time(job, "create_time"),
        "mlflow_ui": job.mlflow.run_url or None,  # beside the predecessor's fields
    }


def dataset_view(dataset: Dataset) -> dict[str, Any]:
    """UploadDataset's answer in the predecessor's shape (its `dataset_id`, and more)."""
    return {
        "dataset_id": dataset.dataset_id,
        "filename": dataset.display_name,
        "rows": dataset.row_count,
        "columns": [column.name for column in dataset.columns],
        "size_bytes": dataset.size_bytes,
        "created_at": _time(dataset, "create_time"),
    }


def train_view(job: TrainingJob) -> dict[str, Any]:
    """CreateTrainingJob's answer. `mlflow_ui` is the run's link, which exists once a
    Trainer has started the job: null here, in GET /models/jobs/{job_id} from then on.
    (Only the Trainer knows MLflow; the gateway has no MLflow setting of its own.)"""
    return {
        "job_id": job.job_id,
        "status": STATUS_OF_STATE.get(job.state, "PENDING"),
        "mlflow_ui": job.mlflow.run_url or None,
    }


class TrainBody(BaseModel):
    """POST /models/train's body, checked as the predecessor checked it."""

    model_config = ConfigDict(extra="ignore")

    dataset_id: str
    target_col: str
    task_type: Literal["classification", "regression"] = "classification"


def parse_train_body(body: bytes) -> TrainBody:
    """The body, or 422 with FastAPI's error list (`loc` from "body"; the input is not
    echoed back)."""
    errors: list[dict[str, Any]]
    try:
        return TrainBody.model_validate_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        errors = [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]
    except ValidationError as error:
        errors = [
            {"type": item["type"], "loc": ["body", *item["loc"]], "msg": item["msg"]}
            for item in error.errors(include_url=False, include_input=False)
        ]
    raise LegacyError.unprocessable(errors)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _time(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    return str(getattr(message, field).ToDatetime(tzinfo=UTC).isoformat())


# -- errors in the predecessor's shape ---------------------------------------------------


class LegacyError(Exception):
    """An answer in the predecessor's error shape."""

    def __init__(
        self, http_status: int, detail: Any, reason: str, headers: Mapping[str, str] = {}
    ) -> None:
        super().__init__(str(detail))
        self.http_status = http_status
        self.detail = detail
        self.reason = reason
        self.headers = dict(headers)

    @classmethod
    def of_status(cls, status: status_pb2.Status, headers: Mapping[str, str] = {}) -> LegacyError:
        reason = status_reason(status) or code_from_number(status.code).name
        http_status = HTTP_STATUS_OF_REASON.get(
            reason, HTTP_STATUS_BY_CODE.get(code_from_number(status.code), 500)
        )
        return cls(http_status, DETAIL_OF_REASON.get(reason, status.message), reason, headers)

    @classmethod
    def unprocessable(cls, errors: list[dict[str, Any]]) -> LegacyError:
        """422 with a validation error list, as FastAPI wrote it."""
        return cls(422, errors, BODY_INVALID)

    def response(self) -> LegacyErrorResponse:
        return LegacyErrorResponse(self)


class LegacyErrorResponse(Response):
    """`{"detail": ..., "reason": ...}`; keeps its reason for the access log."""

    media_type = "application/json"

    def __init__(self, error: LegacyError) -> None:
        document = {"detail": error.detail, "reason": error.reason}
        body = json.dumps(document, ensure_ascii=False, default=str).encode()
        super().__init__(body, status_code=error.http_status, headers=error.headers)
        self.reason = error.reason


def _missing_file() -> LegacyError:
    error = {"type": "missing", "loc": ["body", FILE_FIELD], "msg": "Field required", "input": None}
    return LegacyError.unprocessable([error])


# -- multipart, streamed -----------------------------------------------------------------


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None


class MultipartFile:
    """One file field of a multipart/form-data body, read as the body arrives.

    `open()` reads until the field's part starts and returns its filename;
    `chunks()` then yields its bytes as they arrive and reads the rest of the body
    (other fields are parsed and dropped: nothing is kept of them).
    """

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes, field: str) -> None:
        self._body = body
        self._field = field
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._in_file = False
        self._file_started = False
        self._file_ended = False
        self._pending: deque[bytes] = deque()
        self._exhausted = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    async def open(self) -> str | None:
        while not self._file_started:
            if not await self._pump():
                raise _missing_file()
        return self._part.filename

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._file_ended:
                break
            if not await self._pump():
                raise _malformed("the body ended inside the file")
        while await self._pump():  # the rest: validated, not kept
            self._pending.clear()

    async def _pump(self) -> bool:
        """Feed the next piece of the body to the parser; False at the end of the body."""
        if self._exhausted:
            return False
        try:
            piece = await anext(self._body)
        except StopAsyncIteration:
            self._exhausted = True
            self._parser.finalize()
            return False
        try:
            self._parser.write(piece)
        except MultipartParseError as error:
            raise _malformed(str(error)) from None
        return True

    # python-multipart's callbacks (data arrives as slices of the piece written)

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(
            self._header_value
        )
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._part.filename = None if filename is None else filename.decode("utf-8", "replace")
        self._in_file = self._part.name == self._field and not self._file_started
        if self._in_file:
            self._file_started = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and end > start:
            self._pending.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._file_ended = True


def _malformed(why: str) -> LegacyError:
    error = {"type": "value_error", "loc": ["body"], "msg": f"invalid multipart body: {why}"}
    return LegacyError.unprocessable([error])


def display_name_of(filename: str | None) -> str:
    """The dataset's display name: the file's name without its folders, printable."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join("_" if unicodedata.category(c) == "Cc" else c for c in name).strip()
    return name[:MAX_DISPLAY_NAME_CHARS] or UNNAMED_UPLOAD


# -- the routes ----------------------------------------------------------------------------


Stub = Callable[..., Any]


class LegacyRoutes:
    """Answers the predecessor's routes with the /v1 routes' stubs."""

    JOB_PATH = re.compile(r"^/models/jobs/(?P<job_id>[^/]+)$")

    def __init__(
        self,
        routes: Mapping[str, Route],
        stub: Callable[[Route], Stub],
        upload_chunk_bytes: int,
        max_body_bytes: int,
    ) -> None:
        self._routes = {name: routes[path] for name, path in GRPC_PATHS.items()}
        self._stub = stub
        self._chunk_bytes = upload_chunk_bytes
        self._max_body_bytes = max_body_bytes

    @classmethod
    def serves(cls, path: str) -> bool:
        return path in ("/datasets/upload", "/models/train") or bool(cls.JOB_PATH.match(path))

    def route_of(self, path: str) -> Route:
        """The /v1 route whose call answers `path` (for logs and metrics)."""
        if path == "/datasets/upload":
            return self._routes["UploadDataset"]
        if path == "/models/train":
            return self._routes["CreateTrainingJob"]
        return self._routes["GetTrainingJob"]

    async def respond(self, request: Request, options: CallOptions) -> Response:
        path: str = request.scope["path"]
        method = "GET" if path.startswith("/models/jobs/") else "POST"
        if request.method != method:
            raise LegacyError(405, "Method Not Allowed", "METHOD_NOT_ALLOWED", {"Allow": method})
        try:
            if path == "/datasets/upload":
                return _json(dataset_view(await self._upload(request, options)))
            if path == "/models/train":
                return _json(train_view(await self._train(request, options)))
            match = self.JOB_PATH.match(path)
            assert match is not None
            return _json(job_view(await self._get_job(match["job_id"], options)))
        except BackendError as error:
            raise LegacyError.of_status(error.status) from None
        except GatewayError as error:
            raise LegacyError.of_status(error.status, error.headers) from None

    async def _upload(self, request: Request, options: CallOptions) -> Dataset:
        route = self._routes["UploadDataset"]
        boundary = _boundary(request.headers.get("content-type"))
        file = MultipartFile(request.stream().__aiter__(), boundary, FILE_FIELD)
        filename = await file.open()
        header = UploadDatasetHeader(display_name=display_name_of(filename))
        first = UploadDatasetRequest(header=header)
        dataset = await send_upload(
            route, self._stub(route), first, file.chunks(), options, self._chunk_bytes
        )
        assert isinstance(dataset, Dataset)
        return dataset

    async def _train(self, request: Request, options: CallOptions) -> TrainingJob:
        parsed = parse_train_body(await self._read_json_body(request))
        route = self._routes["CreateTrainingJob"]
        message = CreateTrainingJobRequest(
            dataset_id=parsed.dataset_id,
            target_column=parsed.target_col,
            task=TASK_OF_TASK_TYPE[parsed.task_type],
        )
        job: TrainingJob = await self._unary(route, message, options)
        return job

    async def _get_job(self, job_id: str, options: CallOptions) -> TrainingJob:
        route = self._routes["GetTrainingJob"]
        job: TrainingJob = await self._unary(route, GetTrainingJobRequest(job_id=job_id), options)
        return job

    async def _unary(self, route: Route, message: Message, options: CallOptions) -> Any:
        try:
            return await self._stub(route)(
                message, timeout=options.timeout, metadata=options.metadata
            )
        except grpc.aio.AioRpcError as error:
            raise BackendError(error, route) from error

    async def _read_json_body(self, request: Request) -> bytes:
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > self._max_body_bytes:
                raise LegacyError(
                    413, f"request body over {self._max_body_bytes} bytes", "BODY_TOO_LARGE"
                )
        return bytes(body)


def _boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise _missing_file()  # as FastAPI: no form, so no `file` field
    return boundary


def _json(document: dict[str, Any]) -> Response:
    body = json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
    return Response(body, media_type="application/json")


# -- the OpenAPI document ------------------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    """The three routes, deprecated, each naming its /v1 successor."""
    upload_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
    train_body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("LegacyTrainRequest")}},
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The job's id (as `job_id` of POST /models/train).",
        "schema": {"type": "string", "minLength": 1},
    }
    return {
        "/datasets/upload": {
            "post": _operation(
                "/datasets/upload",
                "Uploads a CSV (the predecessor's route).",
                "LegacyDataset",
                request_body=upload_body,
            )
        },
        "/models/train": {
            "post": _operation(
                "/models/train",
                "Trains a model (the predecessor's route).",
                "LegacyTrainResponse",
                request_body=train_body,
            )
        },
        "/models/jobs/{job_id}": {
            "get": _operation(
                "/models/jobs/{job_id}",
                "Gets a job (the predecessor's route).",
                "LegacyJob",
                parameters=[job_id],
            )
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(path: str, summary: str, schema: str, **parts: Any) -> dict[str, Any]:
    method = "GET" if path.startswith("/models/jobs/") else "POST"
    new_method, new_path, rpc = SUCCESSORS[(method, path)]
    error = {
        "description": "An error in the predecessor's shape, with modelyard's reason.",
        "content": {"application/json": {"schema": _ref("LegacyError")}},
    }
    operation: dict[str, Any] = {
        "operationId": "Legacy_" + rpc,
        "tags": ["Legacy"],
        "deprecated": True,
        "summary": summary,
        "description": f"Deprecated: use `{new_method} {new_path}`. Kept for the "
        "predecessor's clients; see the README's migration table.",
        "responses": {
            "200": {
                "description": "OK.",
                "headers": _REQUEST_ID_HEADER,
                "content": {"application/json": {"schema": _ref(schema)}},
            },
            "400": error,
            "401": error,
            "404": error,
            "422": error,
            "default": error,
        },
        # The gRPC call it is translated to (the /v1 operations name theirs x-grpc-method).
        "x-translated-to": GRPC_PATHS[rpc],
    }
    if "request_body" in parts:
        operation["requestBody"] = parts["request_body"]
    if "parameters" in parts:
        operation["parameters"] = parts["parameters"]
    return operation


_REQUEST_ID_HEADER = {
    "X-Request-Id": {"description": "The request's id.", "schema": {"type": "string"}}
}
_NULLABLE_STRING = {"type": "string", "nullable": True}


def openapi_schemas() -> dict[str, Any]:
    return {
        "LegacyError": {
            "type": "object",
            "required": ["detail", "reason"],
            "properties": {
                "detail": {
                    "description": "A message, or for 422 a list of validation errors.",
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                    ],
                },
                "reason": {"type": "string", "description": "modelyard's reason code."},
            },
        },
        "LegacyDataset": {
            "type": "object",
            "required": ["dataset_id"],
            "properties": {
                "dataset_id": {"type": "string"},
                "filename": {"type": "string"},
                "rows": {"type": "integer", "format": "int64"},
                "columns": {"type": "array", "items": {"type": "string"}},
                "size_bytes": {"type": "integer", "format": "int64"},
                "created_at": _NULLABLE_STRING,
            },
        },
        "LegacyTrainRequest": {
            "type": "object",
            "required": ["dataset_id", "target_col"],
            "properties": {
                "dataset_id": {"type": "string"},
                "target_col": {"type": "string"},
                "task_type": {
                    "type": "string",
                    "enum": list(TASK_OF_TASK_TYPE),
                    "default": "classification",
                },
            },
        },
        "LegacyTrainResponse": {
            "type": "object",
            "required": ["job_id", "status", "mlflow_ui"],
            "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": sorted(set(STATUS_OF_STATE.values()))},
                "mlflow_ui": _NULLABLE_STRING,
            },
        },
        "LegacyJob": {
            "type": "object",
            "required": ["id", "dataset_id", "target_col", "status", "metrics"],
            "properties": {
                "id": {"type": "string"},
                "dataset_id": {"type": "string"},
                "target_col": {"type": "string"},
                "task_type": {
                    "type": "string",
                    "nullable": True,
                    "enum": [*TASK_OF_TASK_TYPE, None],
                },
                "model_name": _NULLABLE_STRING,
                "status": {"type": "string", "enum": sorted(set(STATUS_OF_STATE.values()))},
                "mlflow_run_id": _NULLABLE_STRING,
                "model_uri": _NULLABLE_STRING,
                "metrics": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "nullable": True},
                },
                "error_message": _NULLABLE_STRING,
                "created_at": _NULLABLE_STRING,
                "mlflow_ui": _NULLABLE_STRING,
            },
        },
    }
