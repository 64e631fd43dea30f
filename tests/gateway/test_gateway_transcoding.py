"""The gateway's translation logic on its own: path templates, the router, query
parameters onto (nested, repeated) fields, and proto3 JSON out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import json_format, struct_pb2

from gateway import json_out
from gateway.descriptors import SERVICES, grpc_path, load_services
from gateway.errors import GatewayError
from gateway.routes import (
    MethodNotAllowed,
    RouteKind,
    RouteNotFound,
    Router,
    TemplateError,
    parse_template,
    routes_of,
)
from gateway.transcoding import RequestBuilder, merge_query, to_json
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from modelyard.training.v1 import trainer_service_pb2
from tests.gateway.gateway_doubles import sample_job


def test_template_with_variable_and_custom_verb() -> None:
    template = parse_template("/v1/trainingJobs/{job_id}:cancel")
    assert template.verb == "cancel"
    assert template.variables == (("job_id",),)
    assert template.match("/v1/trainingJobs/j-1:cancel") == ("j-1",)
    assert template.match("/v1/trainingJobs/j-1") is None
    assert template.match("/v1/trainingJobs/a/b:cancel") is None


def test_template_values_are_url_decoded_after_matching() -> None:
    template = parse_template("/v1/models/{model_name}")
    assert template.match("/v1/models/churn.v2-final") == ("churn.v2-final",)
    assert template.match("/v1/models/team%2Fchurn%20model") == ("team/churn model",)
    assert template.match("/v1/models/") is None


def test_template_with_nested_field_and_multi_segment_variable() -> None:
    template = parse_template("/v1/{parent.name=projects/*/models/*}/versions/{version}")
    assert template.variables == (("parent", "name"), ("version",))
    assert template.match("/v1/projects/p1/models/m1/versions/3") == ("projects/p1/models/m1", "3")
    assert template.openapi_path() == "/v1/{parent.name}/versions/{version}"
    rest = parse_template("/v1/files/{path=**}")
    assert rest.match("/v1/files/a/b/c.csv") == ("a/b/c.csv",)


@pytest.mark.parametrize("text", ["v1/no-slash", "/v1/{unclosed", "/v1/{bad-name}", "/v1/a*b"])
def test_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(text)


def annotated_methods() -> set[str]:
    return {
        grpc_path(method)
        for service in load_services()
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http)
    }


def test_every_annotated_rpc_of_the_three_services_gets_a_route() -> None:
    routes = routes_of(load_services())
    assert {route.grpc_path for route in routes} == annotated_methods()
    assert len(annotated_methods()) >= 15
    assert {service.full_name for service in load_services()} == set(SERVICES)
    kinds = {route.method.name: route.kind for route in routes}
    assert kinds["UploadDataset"] is RouteKind.UPLOAD
    assert kinds["DownloadDataset"] is RouteKind.DOWNLOAD
    assert kinds["ReadDataset"] is RouteKind.BYTES_STREAM
    assert kinds["WatchTrainingJob"] is RouteKind.EVENTS
    assert kinds["GetTrainingJob"] is RouteKind.UNARY


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(routes_of(load_services()))


@pytest.mark.parametrize(
    ("method", "path", "rpc", "values"),
    [
        ("GET", "/v1/trainingJobs/j1", "GetTrainingJob", ("j1",)),
        ("POST", "/v1/trainingJobs/j1:cancel", "CancelTrainingJob", ("j1",)),
        ("GET", "/v1/trainingJobs/j1:watch", "WatchTrainingJob", ("j1",)),
        ("GET", "/v1/trainingJobs/j1%3Acancel", "GetTrainingJob", ("j1:cancel",)),
        ("GET", "/v1/trainingJobs", "ListTrainingJobs", ()),
        ("POST", "/v1/trainingJobs", "CreateTrainingJob", ()),
        ("POST", "/v1/datasets", "UploadDataset", ()),
        ("DELETE", "/v1/datasets/d1", "DeleteDataset", ("d1",)),
        ("GET", "/v1/datasets/d1:download", "DownloadDataset", ("d1",)),
        ("GET", "/v1/models/a.b-c", "GetModel", ("a.b-c",)),
        ("POST", "/v1/models/a.b-c:predict", "Predict", ("a.b-c",)),
    ],
)
def test_router_finds_the_rpc(
    router: Router, method: str, path: str, rpc: str, values: tuple[str, ...]
) -> None:
    match = router.match(method, path)
    assert match.route.method.name == rpc
    assert match.values == values


def test_router_tells_wrong_method_from_unknown_route(router: Router) -> None:
    with pytest.raises(MethodNotAllowed) as wrong:
        router.match("PUT", "/v1/trainingJobs/j1")
    assert wrong.value.allowed == ("GET",)
    with pytest.raises(MethodNotAllowed) as verb:
        router.match("GET", "/v1/trainingJobs/j1:cancel")
    assert verb.value.allowed == ("POST",)
    with pytest.raises(RouteNotFound):
        router.match("GET", "/v1/nothing")
    with pytest.raises(RouteNotFound):
        router.match("GET", "/v1/trainingJobs/j1/extra")


def test_query_fills_nested_and_repeated_fields() -> None:
    dataset = dataset_pb2.Dataset()
    merge_query(
        dataset,
        [
            ("displayName", "iris"),
            ("csvOptions.delimiter", ";"),
            ("csv_options.has_header", "false"),
            ("rowCount", "150"),
            ("state", "READY"),
            ("createTime", "2024-05-01T12:00:00Z"),
            ("error.code", "5"),
        ],
    )
    assert dataset.display_name == "iris"
    assert dataset.csv_options.delimiter == ";"
    assert dataset.csv_options.HasField("has_header")
    assert dataset.csv_options.has_header is False
    assert dataset.row_count == 150
    assert dataset.state == dataset_pb2.Dataset.READY
    assert dataset.create_time.seconds == 1714564800
    assert dataset.error.code == 5

    read = dataset_service_pb2.ReadDatasetRequest()
    merge_query(read, [("columns", "a"), ("columns", "b"), ("batch_rows", "10")])
    assert list(read.columns) == ["a", "b"]
    assert read.batch_rows == 10


@pytest.mark.parametrize(
    "query",
    [
        [("displayName", "a"), ("display_name", "b")],  # a singular field twice
        [("csvOptions", "x")],  # a message is not one value
        [("csvOptions.delimiter", ";"), ("csvOptions.delimiter.x", "1")],
        [("displayName.inner", "x")],  # not a message
        [("columns", "x")],  # repeated message
        [("csvOptions.hasHeader", "yes")],  # booleans are true or false
        [("rowCount", "many")],
        [("nope", "1")],
    ],
)
def test_bad_query_is_refused_with_a_reason(query: list[tuple[str, str]]) -> None:
    with pytest.raises(GatewayError) as refused:
        merge_query(dataset_pb2.Dataset(), query)
    assert refused.value.http_status == 400
    assert refused.value.status.details[0].value  # carries an ErrorInfo
    assert b"QUERY_PARAMETER_INVALID" in refused.value.status.details[0].value


def test_query_refuses_fields_bound_elsewhere() -> None:
    with pytest.raises(GatewayError):
        merge_query(
            dataset_service_pb2.GetDatasetRequest(),
            [("datasetId", "x")],
            bound=frozenset({"dataset_id"}),
        )


def test_json_out_is_proto3_json_with_every_scalar_field() -> None:
    job = sample_job("job-1")
    document: dict[str, Any] = json.loads(to_json(job))
    assert document == json_format.MessageToDict(job, always_print_fields_with_no_presence=True)
    assert document["mlflow"]["registeredModelVersion"] == "7"
    assert document["metrics"]["roc_auc"] == "NaN"
    assert document["registeredModelName"] == ""
    assert "taskDetection" not in document


def _predict_builder() -> RequestBuilder:
    routes = routes_of(load_services())
    return RequestBuilder(next(route for route in routes if route.method.name == "Predict"))


def test_predict_rows_parse_as_the_generic_parser_parses_them() -> None:
    """Rows go into their Structs by the gateway's direct fill: the message must be the one
    ParseDict makes from the same JSON, whatever the values (NaN and 1e999 included:
    the Trainer refuses them naming row and column)."""
    rows = [
        {"n": 1.5, "i": 3, "t": "text", "b": True, "z": None, "e": ""},
        {"nested": {"a": [1, None, "x", {"b": False}]}, "list": [], "big": 10**20},
        {},
        {"nan": float("nan"), "inf": float("inf"), "neg": -0.0},
    ]
    body = (
        '{"rows": [{"n": 1.5, "i": 3, "t": "text", "b": true, "z": null, "e": ""}, '
        '{"nested": {"a": [1, null, "x", {"b": false}]}, "list": [], '
        '"big": 100000000000000000000}, '
        '{}, {"nan": NaN, "inf": 1e999, "neg": -0.0}], "version": "2", "explain": true}'
    )
    built = _predict_builder().build(["churn"], [], body.encode())
    expected = trainer_service_pb2.PredictRequest(model_name="churn")
    json_format.ParseDict({"rows": rows, "version": "2", "explain": True}, expected)
    assert built.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


@pytest.mark.parametrize(
    "body",
    [
        '{"rows": [{"a": 1}, 5]}',  # a row that is not an object
        '{"rows": {"a": 1}}',  # rows not a list
        '{"rows": [{"a": 1}], "nope": 1}',  # an unknown field beside good rows
        '{"rows": [{"a": 1}], "version": "x"}',  # a bad value beside good rows
    ],
)
def test_bad_predict_bodies_are_refused_as_before(body: str) -> None:
    with pytest.raises(GatewayError) as refused:
        _predict_builder().build(["churn"], [], body.encode())
    expected = trainer_service_pb2.PredictRequest()
    with pytest.raises(json_format.ParseError) as generic:
        json_format.ParseDict(json.loads(body), expected)
    assert refused.value.http_status == 400
    assert b"REQUEST_BODY_INVALID" in refused.value.status.details[0].value
    assert str(generic.value).split("\n")[0].strip() == refused.value.status.message


def _rich_prediction_answer() -> trainer_service_pb2.PredictResponse:
    answer = trainer_service_pb2.PredictResponse(
        model_name="churn", model_version=12, class_names=["no", "yes"], feature_names=["a", "b"]
    )
    answer.flag_counts.flagged_rows = 1
    for index, value in enumerate(["yes", 2.5, True, None, {"nested": [1, "x", None]}]):
        prediction = answer.predictions.add(probabilities=[0.25, 0.75, -0.0, 1e-300])
        if value is None:
            prediction.value.null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, dict):
            prediction.value.struct_value.update(value)
        elif isinstance(value, bool):
            prediction.value.bool_value = value
        elif isinstance(value, float):
            prediction.value.number_value = value
        else:
            prediction.value.string_value = value
        if index == 1:
            prediction.flags.add(
                kind=trainer_service_pb2.PredictionFlag.KIND_UNSEEN_CATEGORY, column="a"
            )
            prediction.explanations.add(
                class_name="yes", base_value=0.1, contributions=[0.5, float("nan")], raw_score=1
            )
    answer.predictions.add()  # a prediction with nothing set
    return answer


def test_json_out_writes_what_message_to_dict_writes_for_every_route() -> None:
    """The planned printer's document, key order included, is MessageToDict's: for a
    rich Predict answer, a job, and every route's answer type empty."""
    messages: list[Any] = [_rich_prediction_answer(), sample_job("job-1")]
    messages += [route.response_class() for route in routes_of(load_services())]
    for message in messages:
        expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        assert json.loads(to_json(message)) == expected
        assert (
            to_json(message)
            == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
        )


def test_json_out_writes_a_predict_answer_without_message_to_dict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of the planned printer: a Predict answer never takes the slow walk."""
    answer = _rich_prediction_answer()
    expected = json_format.MessageToDict(answer, always_print_fields_with_no_presence=True)

    def refuse(message: Any) -> None:
        raise AssertionError(f"{message.DESCRIPTOR.full_name} written by MessageToDict")

    monkeypatch.setattr(json_out, "generic", refuse)
    assert json_out.JsonOut().to_dict(answer) == expected


def test_json_out_fails_or_falls_back_where_message_to_dict_would() -> None:
    answer = trainer_service_pb2.PredictResponse()
    answer.predictions.add().flags.add(kind=7, column="an enum number this gateway lacks")
    expected = json_format.MessageToDict(answer, always_print_fields_with_no_presence=True)
    assert json.loads(to_json(answer)) == expected
    assert expected["predictions"][0]["flags"][0]["kind"] == 7
    answer.predictions.add().value.number_value = float("inf")
    with pytest.raises(json_format.SerializeToJsonError):
        json_format.MessageToDict(answer, always_print_fields_with_no_presence=True)
    with pytest.raises(json_format.SerializeToJsonError):
        to_json(answer)
