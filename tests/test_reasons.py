"""Reason codes, checked on the source: each process has one `reasons` module, its
README's "Reason codes" tables document exactly the reasons in it, every one is
used, and the ErrorInfo metadata keys the code attaches to a reason are the ones
its row documents, named from one vocabulary (runtime/README.md, "Error details"),
so that the same thing has the same key in every service.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from runtime import reasons as runtime_reasons
from services.training import reasons as training_reasons
from services.training.model import pyfunc_model

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESSES = {
    "services/dataset": "services.dataset.reasons",
    "services/jobs": "services.jobs.reasons",
    "services/training": "services.training.reasons",
    "gateway": "gateway.reasons",
}
# Calls that build an error, and the position of their reason argument.
ERROR_BUILDERS = {
    "invalid_argument": 0,
    "not_found": 0,
    "failed_precondition": 0,
    "resource_exhausted": 0,
    "unavailable": 0,
    "TrainingFailure": 0,
    "ServiceError": 1,
    "make_status": 1,
    "GatewayError": 1,
}
# Keyword arguments of those calls that are not ErrorInfo metadata.
NOT_METADATA = {"invalid_argument", "code", "http_status", "headers", "metadata"}
REASON = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|INTERNAL)`")
KEY = re.compile(r"`([a-z][a-z0-9_]*)`")


@dataclass
class Documented:
    details: dict[str, set[str]] = field(default_factory=dict)


def reasons_module(folder: str) -> ModuleType:
    return importlib.import_module(PROCESSES[folder])


def defined_reasons(module: ModuleType) -> dict[str, str]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value == name
    }


def own_reasons(module: ModuleType) -> set[str]:
    """The reasons the process raises itself (not those the runtime raises for it)."""
    return set(defined_reasons(module)) - set(defined_reasons(runtime_reasons))


def source_files(folder: str) -> Iterator[Path]:
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        if path.name != "reasons.py" and "migrations" not in path.parts:
            yield path


def table_rows(text: str) -> Iterator[dict[str, str]]:
    """Rows of every table in the README's "Reason codes" section, by header."""
    section = re.search(r"^## Reason codes\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "no '## Reason codes' section"
    header: list[str] | None = None
    for line in section.group(1).splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
        elif not set(line) <= set("|-: "):
            yield dict(zip(header, cells, strict=False))


def documented(folder: str) -> Documented:
    found = Documented()
    for row in table_rows((REPO_ROOT / folder / "README.md").read_text()):
        assert "details" in row, f"{folder}/README.md: a reason table without a details column"
        for reason in REASON.findall(row["reason"]):
            found.details.setdefault(reason, set()).update(KEY.findall(row["details"]))
    return found


@dataclass(frozen=True)
class Raised:
    path: Path
    line: int
    reason: str | None  # None: a literal string (which the test refuses) or a variable
    literal: str | None
    keys: frozenset[str]


def raised_errors(path: Path) -> Iterator[Raised]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name not in ERROR_BUILDERS or len(node.args) <= ERROR_BUILDERS[name]:
            continue
        argument = node.args[ERROR_BUILDERS[name]]
        reason = None
        if isinstance(argument, ast.Attribute) and argument.attr.isupper():
            reason = argument.attr
        elif isinstance(argument, ast.Name) and argument.id.isupper():
            reason = argument.id
        literal = str(argument.value) if isinstance(argument, ast.Constant) else None
        yield Raised(path, node.lineno, reason, literal, frozenset(metadata_keys(node, name)))


def metadata_keys(node: ast.Call, name: str) -> set[str]:
    keys = {k.arg for k in node.keywords if k.arg and k.arg not in NOT_METADATA}
    literals = [k.value for k in node.keywords if k.arg == "metadata"]
    position = ERROR_BUILDERS[name] + 2  # code/reason, message, then the metadata mapping
    if len(node.args) > position:
        literals.append(node.args[position])
    for literal in literals:
        if isinstance(literal, ast.Dict):
            keys |= {str(k.value) for k in literal.keys if isinstance(k, ast.Constant)}
    return keys


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_errors_name_their_reason_from_the_reasons_module(folder: str) -> None:
    inline = [
        f"{raised.path.relative_to(REPO_ROOT)}:{raised.line} {raised.literal}"
        for path in source_files(folder)
        for raised in raised_errors(path)
        if raised.literal is not None
    ]
    assert inline == []


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_the_readme_documents_exactly_the_reasons_module(folder: str) -> None:
    in_code = set(defined_reasons(reasons_module(folder)))
    in_readme = set(documented(folder).details)
    assert sorted(in_code - in_readme) == [], "reasons missing from the README table"
    assert sorted(in_readme - in_code) == [], "documented reasons the code does not have"


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_every_reason_of_the_module_is_used(folder: str) -> None:
    used: set[str] = set()
    for path in source_files(folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.isupper():
                used.add(node.attr)
            elif isinstance(node, ast.Name) and node.id.isupper():
                used.add(node.id)
    if folder == "services/training":  # raised by the pyfunc model, in its own spelling
        used |= {
            pyfunc_model.COLUMNS_MISSING,
            pyfunc_model.VALUE_INVALID,
            pyfunc_model.VALUE_NOT_FINITE,
        }
    assert sorted(own_reasons(reasons_module(folder)) - used) == []


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_metadata_keys_are_the_documented_ones(folder: str) -> None:
    documented_keys = documented(folder).details
    undocumented = [
        f"{raised.path.relative_to(REPO_ROOT)}:{raised.line} {raised.reason} "
        f"{sorted(raised.keys - documented_keys.get(raised.reason, set()))}"
        for path in source_files(folder)
        for raised in raised_errors(path)
        if raised.reason in documented_keys and raised.keys - documented_keys[raised.reason]
    ]
    assert undocumented == []


def vocabulary() -> set[str]:
    text = (REPO_ROOT / "runtime" / "README.md").read_text()
    section = re.search(r"^## Error details\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "runtime/README.md has no '## Error details' section"
    keys: set[str] = set()
    for line in section.group(1).splitlines():
        if line.startswith("| `"):
            keys.update(KEY.findall(line.split("|")[1]))
    return keys


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_metadata_keys_come_from_one_vocabulary(folder: str) -> None:
    keys = set().union(*documented(folder).details.values())
    assert sorted(keys - vocabulary()) == []


# The code's own name, for two different things: a job that ran past its
# max_run_duration (Jobs, Trainer) and a call the gateway gave up on (with `service`).
ONE_NAME_TWO_THINGS = {"DEADLINE_EXCEEDED"}


def test_one_reason_has_one_meaning_across_services() -> None:
    """A reason two processes both raise has the same metadata keys in both READMEs."""
    by_reason: dict[str, dict[str, set[str]]] = {}
    for folder in PROCESSES:
        for reason, keys in documented(folder).details.items():
            if reason in ONE_NAME_TWO_THINGS:
                continue
            by_reason.setdefault(reason, {})[folder] = keys
    differing = {
        reason: {folder: sorted(keys) for folder, keys in where.items()}
        for reason, where in by_reason.items()
        if len({frozenset(keys) for keys in where.values()}) > 1
    }
    assert differing == {}


def test_the_pyfunc_model_spells_the_predict_reasons_as_the_trainer_does() -> None:
    assert pyfunc_model.COLUMNS_MISSING == training_reasons.PREDICT_COLUMNS_MISSING
    assert pyfunc_model.VALUE_INVALID == training_reasons.PREDICT_VALUE_INVALID
    assert pyfunc_model.VALUE_NOT_FINITE == training_reasons.PREDICT_VALUE_NOT_FINITE
