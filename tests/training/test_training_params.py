"""The LightGBM parameter allow-list: aliases, types, ranges, and what is refused."""

from __future__ import annotations

import grpc
import pytest
from lightgbm.basic import _ConfigAliases

from runtime.errors import ServiceError
from services.training.model.params import ALLOWED_PARAMS, IO_PARAMS, as_strings, validate_params


def refused(params: dict[str, str]) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        validate_params(params, max_threads=4)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return error.value


def test_aliases_become_canonical_names_with_typed_values() -> None:
    accepted = validate_params(
        {
            "n_estimators": "250",
            "eta": "0.05",
            "colsample_bytree": " 0.8 ",
            "Reg_Lambda": "1e-3",
            "is_unbalance": "TRUE",
            "early_stopping_rounds": "0",
            "data_sample_strategy": "GOSS",
        },
        max_threads=4,
    )
    assert accepted == {
        "num_iterations": 250,
        "learning_rate": 0.05,
        "feature_fraction": 0.8,
        "lambda_l2": 0.001,
        "is_unbalance": True,
        "early_stopping_round": 0,
        "data_sample_strategy": "goss",
    }
    assert as_strings(accepted)["is_unbalance"] == "true"
    assert as_strings(accepted)["learning_rate"] == "0.05"


@pytest.mark.parametrize(
    "name",
    [
        "output_model",
        "input_model",
        "machines",
        "save_binary",
        "machine_list_filename",
        "local_listen_port",
        "snapshot_freq",
        "forcedsplits_filename",
        "config",
        "data",
        "valid",
        "tree_learner",
        "device_type",
    ],
)
def test_file_and_socket_parameters_are_refused(name: str) -> None:
    error = refused({name: "x", "num_leaves": "31"})
    assert error.reason == "PARAM_NOT_ALLOWED"
    assert error.metadata["params"] == name
    assert "files or open sockets" in error.message


def test_unknown_parameters_are_refused_by_name() -> None:
    error = refused({"metric": "auc", "verbosity": "1"})
    assert error.reason == "PARAM_NOT_ALLOWED"
    assert error.metadata["params"] == "metric,verbosity"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"num_leaves": "1"}, "num_leaves"),
        ({"num_leaves": "31.5"}, "num_leaves"),
        ({"learning_rate": "0"}, "learning_rate"),
        ({"learning_rate": "nan"}, "learning_rate"),
        ({"feature_fraction": "1.5"}, "feature_fraction"),
        ({"max_bin": "100000"}, "max_bin"),
        ({"is_unbalance": "maybe"}, "is_unbalance"),
        ({"class_weight": "heavy"}, "class_weight"),
        ({"objective": "binary"}, "objective"),
        ({"n_estimators": "many"}, "n_estimators"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(params: dict[str, str], named: str) -> None:
    error = refused(params)
    assert error.reason == "PARAM_INVALID_VALUE"
    assert error.metadata["params"] == named
    assert named in error.message


def test_two_aliases_of_one_parameter_conflict() -> None:
    error = refused({"n_estimators": "10", "num_iterations": "20"})
    assert error.reason == "PARAM_DUPLICATE"


def test_num_threads_is_capped_by_the_trainer() -> None:
    assert validate_params({"n_jobs": "64"}, max_threads=2) == {"num_threads": 2}


def test_allowed_names_are_lightgbm_names_and_never_io_ones() -> None:
    lightgbm_aliases = _ConfigAliases._get_all_param_aliases()
    for spec in ALLOWED_PARAMS:
        if spec.name == "class_weight":  # applied by the Trainer as row weights
            continue
        assert spec.name in lightgbm_aliases, spec.name
        assert set(spec.aliases) <= set(lightgbm_aliases[spec.name]), spec.name
        assert not ({spec.name, *spec.aliases} & IO_PARAMS)
    for io_name in ("output_model", "input_model", "machines", "save_binary"):
        assert set(lightgbm_aliases[io_name]) <= IO_PARAMS
