"""The groups `make test` hands to its workers: a directory sharing a session stack
stays on one worker, other modules spread, the longest groups go out first."""

from __future__ import annotations

from tests.parallel_groups import LONGEST_FIRST, group_of, hand_out_rank


def test_a_directory_sharing_a_session_stack_is_one_group() -> None:
    assert group_of("tests/cli/test_cli_datasets.py::test_list[json]") == "cli"
    assert group_of("tests/e2e/test_e2e_whole_path.py::test_x") == "e2e"
    assert group_of("tests/training/test_training_worker.py::test_x") == "training"


def test_other_modules_are_groups_of_their_own() -> None:
    assert group_of("tests/jobs/test_jobs_api.py::test_a") == "jobs/test_jobs_api.py"
    assert group_of("tests/jobs/test_jobs_api.py::test_b[x::y]") == "jobs/test_jobs_api.py"
    assert group_of("tests/test_reasons.py::test_c") == "test_reasons.py"


def test_a_module_with_a_stack_of_its_own_leaves_its_directory_group() -> None:
    schemathesis = "tests/e2e/test_e2e_schemathesis.py::test_schemathesis_finds_no_server_error"
    assert group_of(schemathesis) == "e2e/test_e2e_schemathesis.py"
    assert group_of("tests/training/test_training_pipeline.py::test_x") != "training"
    assert hand_out_rank(schemathesis) == hand_out_rank("tests/e2e/test_e2e_tls.py::test_tls")


def test_the_longest_areas_are_handed_out_first() -> None:
    e2e = hand_out_rank("tests/e2e/test_e2e_tls.py::test_tls")
    fault = hand_out_rank("tests/fault/test_fault_recovery.py::test_burst")
    runtime = hand_out_rank("tests/runtime/test_runtime_db.py::test_url")
    assert e2e < fault < runtime == len(LONGEST_FIRST)
