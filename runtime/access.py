"""Who is calling, and what each RPC needs of them.

Every gRPC call is made by a `Caller`: a project and a role. The server
interceptor (runtime/interceptors.py) resolves it from the call's bearer token
and keeps it in a context variable for the handler:

- the service token (modelyard's own services) acts for the project named in
  the metadata `x-modelyard-project` (`default` when absent) with the role in
  `x-modelyard-role` (admin when absent). The gateway forwards an
  authenticated REST client that way: the client's project and role, never
  more;
- an API token (`myk_<token id>_<secret>`) acts for its own project with its
  own role, resolved by the Jobs service (AccessService.AuthenticateApiToken).

`METHOD_ROLES` is the one table of the least role each RPC needs;
tests/runtime/test_access_roles.py checks that every RPC of every service is in it.
"""

from __future__ import annotations

import contextvars
import enum
import re
from dataclasses import dataclass

DEFAULT_PROJECT = "default"
PROJECT_KEY = "x-modelyard-project"
ROLE_KEY = "x-modelyard-role"
API_TOKEN_PREFIX = "myk_"
# Project ids: lower-case letters, digits and '-', starting with a letter.
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{0,39}")


class Role(enum.IntEnum):
    """Each role includes the ones below it. Values match modelyard.access.v1.Role."""

    VIEWER = 1
    TRAINER = 2
    ADMIN = 3
    # Not a role a token can have: the RPC is for modelyard's own services only.
    SERVICE = 4

    @classmethod
    def parse(cls, text: str) -> Role | None:
        """`viewer`, `ROLE_VIEWER`, ... (not SERVICE); None when it names no role."""
        name = text.strip().upper().removeprefix("ROLE_")
        role = cls.__members__.get(name)
        return None if role is None or role is Role.SERVICE else role


@dataclass(frozen=True)
class Caller:
    project: str
    role: Role
    # True for a service's own call (the service token with no role forwarded).
    is_service: bool = False
    # True for a service's own call that names no project: it sees every project's
    # resources (the Trainer reading the dataset of a job, background loops).
    all_projects: bool = False

    def may(self, needed: Role) -> bool:
        if needed is Role.SERVICE:
            return self.is_service
        return self.is_service or self.role >= needed


# A call outside any gRPC handler (a background loop) acts as the service itself.
SERVICE_CALLER = Caller(DEFAULT_PROJECT, Role.ADMIN, is_service=True, all_projects=True)
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "modelyard_caller", default=SERVICE_CALLER
)


def current_caller() -> Caller:
    return _caller.get()


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _caller.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _caller.reset(token)


def service_caller_for(project: str) -> Caller:
    """A service's own work for one project (a Trainer running a job of that project)."""
    return Caller(project or DEFAULT_PROJECT, Role.ADMIN, is_service=True)


def forwarding_metadata(caller: Caller) -> tuple[tuple[str, str], ...]:
    """Metadata that makes a service-token call act for `caller` (the gateway's)."""
    return ((PROJECT_KEY, caller.project), (ROLE_KEY, caller.role.name.lower()))


def visible_project() -> str | None:
    """The one project the current caller's reads and lists are scoped to; None when it
    sees them all (a service's own call). Another project's resource is then answered
    exactly like one that does not exist."""
    caller = current_caller()
    return None if caller.all_projects else caller.project


def may_see(project: str | None) -> bool:
    """Whether the current caller sees a resource of `project` (None or "": `default`,
    the project of everything made before projects)."""
    scope = visible_project()
    return scope is None or scope == (project or DEFAULT_PROJECT)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata of a call a service makes while serving a client: the client's project,
    so that the next service scopes its answer the same way (nothing for a service's
    own unscoped work)."""
    scope = visible_project()
    return () if scope is None else ((PROJECT_KEY, scope),)


_V, _T, _A, _S = Role.VIEWER, Role.TRAINER, Role.ADMIN, Role.SERVICE

# Full gRPC method name → the least role that may call it.
METHOD_ROLES: dict[str, Role] = {
    "/modelyard.access.v1.AccessService/CreateProject": _A,
    "/modelyard.access.v1.AccessService/GetProject": _V,
    "/modelyard.access.v1.AccessService/ListProjects": _V,
    "/modelyard.access.v1.AccessService/CreateApiToken": _A,
    "/modelyard.access.v1.AccessService/ListApiTokens": _A,
    "/modelyard.access.v1.AccessService/DeleteApiToken": _A,
    "/modelyard.access.v1.AccessService/AuthenticateApiToken": _S,
    "/modelyard.dataset.v1.DatasetService/UploadDataset": _T,
    "/modelyard.dataset.v1.DatasetService/GetDataset": _V,
    "/modelyard.dataset.v1.DatasetService/ListDatasets": _V,
    "/modelyard.dataset.v1.DatasetService/ListDatasetVersions": _V,
    "/modelyard.dataset.v1.DatasetService/LookupDataset": _V,
    "/modelyard.dataset.v1.DatasetService/DeleteDataset": _T,
    "/modelyard.dataset.v1.DatasetService/DownloadDataset": _V,
    "/modelyard.dataset.v1.DatasetService/ReadDataset": _V,
    "/modelyard.dataset.v1.DatasetService/GetParquetAccess": _V,
    "/modelyard.jobs.v1.JobsService/CreateTrainingJob": _T,
    "/modelyard.jobs.v1.JobsService/GetTrainingJob": _V,
    "/modelyard.jobs.v1.JobsService/ListTrainingJobs": _V,
    "/modelyard.jobs.v1.JobsService/CancelTrainingJob": _T,
    "/modelyard.jobs.v1.JobsService/WatchTrainingJob": _V,
    "/modelyard.jobs.v1.JobsService/ListTrials": _V,
    "/modelyard.jobs.v1.JobsService/GetTrainingJobReport": _V,
    "/modelyard.jobs.v1.JobsService/EstimateTrainingJob": _V,
    "/modelyard.jobs.v1.JobsService/ReplayTrainingJob": _T,
    "/modelyard.jobs.v1.JobsService/CreateScoringJob": _T,
    "/modelyard.jobs.v1.JobsService/GetScoringJob": _V,
    "/modelyard.jobs.v1.JobsService/ListScoringJobs": _V,
    "/modelyard.jobs.v1.JobsService/CancelScoringJob": _T,
    "/modelyard.jobs.v1.JobsService/WatchScoringJob": _V,
    "/modelyard.training.v1.TrainerService/ListModels": _V,
    "/modelyard.training.v1.TrainerService/GetModel": _V,
    "/modelyard.training.v1.TrainerService/ValidateTrainingParams": _V,
    "/modelyard.training.v1.TrainerService/EstimateTraining": _V,
    "/modelyard.training.v1.TrainerService/Predict": _V,
}


def required_role(method: str) -> Role:
    """The least role `method` needs; an RPC missing from the table is for services only
    (a new RPC is closed until someone decides who may call it)."""
    return METHOD_ROLES.get(method, Role.SERVICE)


def parse_api_token(token: str) -> tuple[str, str] | None:
    """`myk_<token id>_<secret>` → (token id, secret); None when not of that shape."""
    if not token.startswith(API_TOKEN_PREFIX):
        return None
    token_id, _, secret = token[len(API_TOKEN_PREFIX) :].partition("_")
    if not re.fullmatch(r"[0-9a-f]{16}", token_id) or not secret or len(secret) > 200:
        return None
    return token_id, secret
