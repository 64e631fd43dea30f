"""LightGBM parameter overrides: an allow-list with types and ranges.

A job's `params` map (strings, as the user gave them) is checked here before
the job is queued (TrainerService.ValidateTrainingParams) and again when it is
trained. Every accepted parameter is returned under its canonical LightGBM
name with a typed value. Anything not in the table is refused with
PARAM_NOT_ALLOWED; in particular the parameters that make LightGBM read or
write files or open sockets, since a job's parameters come from users.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import invalid_argument
from services.training import reasons

ParamValue = int | float | bool | str

# Parameters that read or write files, open sockets or change what LightGBM
# does with its input (LightGBM's names and aliases). Refused with a message
# that says why; everything else not allowed is refused as unknown.
IO_PARAMS = frozenset(
    {
        # write files
        "output_model", "model_output", "model_out",
        "save_binary", "is_save_binary", "is_save_binary_file",
        "snapshot_freq", "save_period",
        "output_result", "predict_result", "prediction_result", "predict_name",
        "prediction_name", "pred_name", "name_pred",
        "convert_model", "convert_model_file", "convert_model_language",
        # read files
        "input_model", "model_input", "model_in",
        "data", "train", "train_data", "train_data_file", "data_filename",
        "valid", "test", "valid_data", "valid_data_file", "test_data", "test_data_file",
        "valid_filenames",
        "initscore_filename", "init_score_filename", "init_score_file", "init_score",
        "input_init_score", "valid_data_initscores", "valid_init_score_file", "valid_init_score",
        "forcedsplits_filename", "forced_splits_filename", "forced_splits_file",
        "forced_splits", "fs",
        "forcedbins_filename", "config", "config_file", "parser_config_file",
        "machine_list_filename", "machine_list_file", "machine_list", "mlist",
        # open sockets / distributed learning
        "machines", "nodes", "workers", "local_listen_port", "local_port", "port",
        "listen_port", "num_machines", "num_machine", "time_out",
        "tree_learner", "tree", "tree_type", "tree_learner_type",
        # devices and modes the Trainer does not run
        "task", "task_type", "device_type", "device", "gpu_platform_id", "gpu_device_id",
        "gpu_use_dp", "num_gpu",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ParamSpec:
    """One allowed parameter: its type and the range of accepted values."""

    name: str
    kind: type[int] | type[float] | type[bool] | type[str]
    minimum: float | None = None
    maximum: float | None = None
    # A strict lower bound (value > minimum) rather than value >= minimum.
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    meaning: str = ""


REGRESSION_OBJECTIVES = (
    "regression", "regression_l1", "huber", "fair", "poisson", "quantile", "mape",
    "gamma", "tweedie",
)  # fmt: skip

ALLOWED_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "num_iterations", int, 1, 10_000,
        aliases=("num_iteration", "n_iter", "num_tree", "num_trees", "num_round", "num_rounds",
                 "nrounds", "num_boost_round", "n_estimators", "max_iter"),
        meaning="boosting rounds at most (early stopping may end sooner)",
    ),
    ParamSpec("learning_rate", float, 0.0, 1.0, exclusive_minimum=True,
              aliases=("shrinkage_rate", "eta")),
    ParamSpec("num_leaves", int, 2, 131_072,
              aliases=("num_leaf", "max_leaves", "max_leaf", "max_leaf_nodes")),
    ParamSpec("max_depth", int, -1, 64, meaning="-1 or 0: no limit"),
    ParamSpec("min_data_in_leaf", int, 1, 1_000_000,
              aliases=("min_data_per_leaf", "min_data", "min_child_samples", "min_samples_leaf")),
    ParamSpec("min_sum_hessian_in_leaf", float, 0.0, 1e6,
              aliases=("min_sum_hessian_per_leaf", "min_sum_hessian", "min_hessian",
                       "min_child_weight")),
    ParamSpec("feature_fraction", float, 0.0, 1.0, exclusive_minimum=True,
              aliases=("sub_feature", "colsample_bytree")),
    ParamSpec("feature_fraction_bynode", float, 0.0, 1.0, exclusive_minimum=True,
              aliases=("sub_feature_bynode", "colsample_bynode")),
    ParamSpec("bagging_fraction", float, 0.0, 1.0, exclusive_minimum=True,
              aliases=("sub_row", "subsample", "bagging")),
    ParamSpec("bagging_freq", int, 0, 10_000, aliases=("subsample_freq",)),
    ParamSpec("data_sample_strategy", str, choices=("bagging", "goss")),
    ParamSpec("top_rate", float, 0.0, 1.0, exclusive_minimum=True),
    ParamSpec("other_rate", float, 0.0, 1.0),
    ParamSpec("lambda_l1", float, 0.0, 1e6, aliases=("reg_alpha", "l1_regularization")),
    ParamSpec("lambda_l2", float, 0.0, 1e6,
              aliases=("reg_lambda", "lambda", "l2_regularization")),
    ParamSpec("min_gain_to_split", float, 0.0, 1e6, aliases=("min_split_gain",)),
    ParamSpec("max_delta_step", float, 0.0, 1e6,
              aliases=("max_tree_output", "max_leaf_output")),
    ParamSpec("path_smooth", float, 0.0, 1e6),
    ParamSpec("extra_trees", bool, aliases=("extra_tree",)),
    ParamSpec("max_bin", int, 2, 4096, aliases=("max_bins",)),
    ParamSpec("min_data_in_bin", int, 1, 1_000_000),
    ParamSpec("min_data_per_group", int, 1, 1_000_000),
    ParamSpec("max_cat_threshold", int, 1, 1024),
    ParamSpec("cat_l2", float, 0.0, 1e6),
    ParamSpec("cat_smooth", float, 0.0, 1e6),
    ParamSpec("max_cat_to_onehot", int, 1, 1024),
    ParamSpec("early_stopping_round", int, 0, 10_000,
              aliases=("early_stopping_rounds", "early_stopping", "n_iter_no_change"),
              meaning="0 disables early stopping"),
    ParamSpec("is_unbalance", bool, aliases=("unbalance", "unbalanced_sets"),
              meaning="binary only: weight classes by their frequency"),
    ParamSpec("scale_pos_weight", float, 0.0, 1e6, exclusive_minimum=True,
              meaning="binary only: weight of the positive class"),
    ParamSpec("class_weight", str, choices=("none", "balanced"),
              meaning="classification: 'balanced' weights rows inversely to their class size"),
    ParamSpec("objective", str, choices=REGRESSION_OBJECTIVES,
              aliases=("objective_type", "app", "application", "loss"),
              meaning="regression only; classification objectives follow the task"),
    ParamSpec("alpha", float, 0.0, 1e6, exclusive_minimum=True,
              meaning="huber and quantile objectives"),
    ParamSpec("tweedie_variance_power", float, 1.0, 2.0),
    ParamSpec("seed", int, 0, 2**31 - 1, aliases=("random_seed", "random_state")),
    ParamSpec("num_threads", int, 1, 1024,
              aliases=("num_thread", "nthread", "nthreads", "n_jobs"),
              meaning="capped by the Trainer's num_threads setting"),
)  # fmt: skip

SPECS_BY_NAME: dict[str, ParamSpec] = {
    alias: spec for spec in ALLOWED_PARAMS for alias in (spec.name, *spec.aliases)
}

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def validate_params(raw: Mapping[str, str], *, max_threads: int) -> dict[str, ParamValue]:
    """The overrides under their canonical names, typed; INVALID_ARGUMENT otherwise.

    Errors name every offending parameter (metadata `params`), so a user fixes
    them all at once.
    """
    refused = sorted(name for name in raw if _normalise_name(name) not in SPECS_BY_NAME)
    if refused:
        io = [name for name in refused if _normalise_name(name) in IO_PARAMS]
        why = (
            f"{', '.join(io)} read or write files or open sockets; " if io else ""
        ) + "the allowed parameters are listed in services/training/README.md"
        raise invalid_argument(
            reasons.PARAM_NOT_ALLOWED,
            f"parameter(s) not allowed: {', '.join(refused)} ({why})",
            params=",".join(refused),
        )
    accepted: dict[str, ParamValue] = {}
    given_as: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(raw):
        spec = SPECS_BY_NAME[_normalise_name(name)]
        if spec.name in accepted:
            raise invalid_argument(
                reasons.PARAM_DUPLICATE,
                f"{given_as[spec.name]} and {name} both set {spec.name}",
                params=f"{given_as[spec.name]},{name}",
            )
        try:
            accepted[spec.name] = _parse(spec, raw[name].strip())
        except ValueError as error:
            problems.append(f"{name}: {error}")
        given_as[spec.name] = name
    if problems:
        raise invalid_argument(
            reasons.PARAM_INVALID_VALUE,
            "invalid parameter value(s): " + "; ".join(problems),
            params=",".join(problem.split(":", 1)[0] for problem in problems),
        )
    if "num_threads" in accepted:
        accepted["num_threads"] = min(int(accepted["num_threads"]), max_threads)
    return accepted


def as_strings(params: Mapping[str, ParamValue]) -> dict[str, str]:
    """Typed parameters back to the map<string, string> of the contracts."""
    return {name: _format(value) for name, value in sorted(params.items())}


def _normalise_name(name: str) -> str:
    return name.strip().lower()


def _parse(spec: ParamSpec, text: str) -> ParamValue:
    if spec.kind is bool:
        lowered = text.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if spec.kind is str:
        lowered = text.lower()
        if lowered not in spec.choices:
            raise ValueError(f"expected one of {', '.join(spec.choices)}, got {text!r}")
        return lowered
    value: int | float
    if spec.kind is int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
    else:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
    _check_range(spec, value)
    return value


def _check_range(spec: ParamSpec, value: float) -> None:
    low, high = spec.minimum, spec.maximum
    too_low = low is not None and (value <= low if spec.exclusive_minimum else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        opening = "(" if spec.exclusive_minimum else "["
        raise ValueError(f"{value:g} is outside {opening}{low:g}, {high:g}]")


def _format(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
