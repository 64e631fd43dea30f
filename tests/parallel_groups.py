"""How `make test` shares the suite between its two pytest-xdist workers.

A group runs whole on one worker, so a fixture it shares (module or session
scope) starts once for it. The directories in DIRECTORY_GROUPS share one
session-scoped stack or set of servers across their modules: each is one group,
so the other worker never starts a second one (but for OWN_GROUP_MODULES, which
share none of it). Every other module is a group of its own. Groups are handed
out longest first (LONGEST_FIRST, measured with `--durations`), so no long group
starts last while the other worker idles.

The grouping is computed from the node id by a scheduler of our own rather than
read from `xdist_group` marks: pytest-xdist 3.8 tags a node id with its group
through an attribute pytest 9.2 no longer reads, so the marks group nothing.
"""

from __future__ import annotations

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

DIRECTORY_GROUPS = ("cli", "e2e", "training")
# Modules in those directories that use none of the shared session fixtures (they
# start a stack of their own, or train in the test process): groups of their own, so
# that the other worker can take them instead of the directory's worker running them
# after the rest of the directory.
OWN_GROUP_MODULES = (
    "e2e/test_e2e_schemathesis.py",
    "e2e/test_e2e_tls.py",
    "training/test_training_params.py",
    "training/test_training_pipeline.py",
    "training/test_training_row_scoring.py",
    "training/test_training_search.py",
    "training/test_training_versions.py",
)
LONGEST_FIRST = ("e2e", "cli", "fault", "training", "jobs", "security", "dataset", "deploy")


def group_of(nodeid: str) -> str:
    """`tests/cli/test_cli_x.py::test_y[z]` → `cli`; other tests → their module path."""
    module = nodeid.split("::", 1)[0].removeprefix("tests/")
    area = module.split("/", 1)[0]
    shared = area in DIRECTORY_GROUPS and "/" in module and module not in OWN_GROUP_MODULES
    return area if shared else module


def hand_out_rank(nodeid: str) -> int:
    area = group_of(nodeid).split("/", 1)[0]
    return LONGEST_FIRST.index(area) if area in LONGEST_FIRST else len(LONGEST_FIRST)


def order_for_workers(items: list[pytest.Item]) -> None:
    """Longest groups first; a stable sort, so modules stay whole and in file order."""
    items.sort(key=lambda item: hand_out_rank(item.nodeid))


class SuiteGroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling (whole groups to one worker, the next group to the
    first worker free) with the groups of `group_of`."""

    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)
