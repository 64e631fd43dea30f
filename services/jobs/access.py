"""Projects and API tokens: their storage and the AccessService RPCs.

A token is `myk_<token id>_<secret>`: the id finds the row, and the SHA-256 of the
secret is compared with the stored one in constant time, so the database never holds
a usable token. Who may call what is runtime/access.py's table; on top of it an admin
of a project manages that project's tokens only, and only an admin of `default` (the
operator) creates projects or manages other projects. A project the caller may not see
answers exactly as one that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import ColumnElement, Select, Table, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.access.v1 import access_service_pb2 as pb
from modelyard.access.v1 import access_service_pb2_grpc
from runtime import access
from runtime.access import Caller, Role, current_caller
from runtime.errors import ServiceError, invalid_argument, not_found
from runtime.limits import check_request_id
from runtime.pagination import Page, page_tail, parse_page
from services.jobs import reasons
from services.jobs.models import ApiTokenRow, ProjectRow
from services.jobs.settings import JobsSettings

PROJECTS = cast(Table, ProjectRow.__table__)
API_TOKENS = cast(Table, ApiTokenRow.__table__)
MAX_DISPLAY_NAME = 200


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _timestamp(value: datetime | None) -> Timestamp:
    stamp = Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def _project(row: Any) -> pb.Project:
    return pb.Project(
        project_id=row.project_id,
        display_name=row.display_name,
        create_time=_timestamp(row.create_time),
    )


def _api_token(row: Any) -> pb.ApiToken:
    token = pb.ApiToken(
        token_id=row.token_id,
        project_id=row.project_id,
        role=row.role,
        display_name=row.display_name,
        create_time=_timestamp(row.create_time),
        expire_time=_timestamp(row.expire_time),
    )
    if row.revoke_time is not None:
        token.revoke_time.CopyFrom(_timestamp(row.revoke_time))
    return token


def check_project_id(project_id: str) -> str:
    if not access.PROJECT_ID.fullmatch(project_id):
        raise invalid_argument(
            reasons.PROJECT_ID_INVALID,
            "project_id must be 1 to 40 of lower-case letters, digits and '-', "
            "starting with a letter",
        )
    return project_id


def _check_display_name(display_name: str) -> str:
    if len(display_name) > MAX_DISPLAY_NAME or not display_name.isprintable():
        raise invalid_argument(
            reasons.ACCESS_DISPLAY_NAME_INVALID,
            f"display_name must be at most {MAX_DISPLAY_NAME} printable characters",
        )
    return display_name


def _project_not_found(project_id: str) -> ServiceError:
    return not_found(
        reasons.PROJECT_NOT_FOUND, f"project {project_id} does not exist", project_id=project_id
    )


def _is_operator(caller: Caller) -> bool:
    """An admin of `default` (or a service's own call) manages every project."""
    return caller.is_service or (
        caller.project == access.DEFAULT_PROJECT and caller.role >= Role.ADMIN
    )


def _may_manage(caller: Caller, project_id: str) -> bool:
    """A caller sees its own project; the operator sees them all."""
    return _is_operator(caller) or caller.project == project_id


class AccessStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def project(self, project_id: str) -> Any | None:
        return await self._first(select(PROJECTS).where(PROJECTS.c.project_id == project_id))

    async def insert_project(self, values: dict[str, Any]) -> bool:
        """False when the project id (or the request id) is taken."""
        return await self._insert(PROJECTS, values)

    async def projects(self, page: Page, only: str | None) -> list[Any]:
        statement = select(PROJECTS)
        if only is not None:
            statement = statement.where(PROJECTS.c.project_id == only)
        return await self._page(statement, PROJECTS, PROJECTS.c.project_id, page)

    async def token(self, token_id: str) -> Any | None:
        return await self._first(select(API_TOKENS).where(API_TOKENS.c.token_id == token_id))

    async def token_by_request_id(self, request_id: str) -> Any | None:
        return await self._first(select(API_TOKENS).where(API_TOKENS.c.request_id == request_id))

    async def insert_token(self, values: dict[str, Any]) -> bool:
        return await self._insert(API_TOKENS, values)

    async def tokens(self, project_id: str, page: Page) -> list[Any]:
        statement = select(API_TOKENS).where(API_TOKENS.c.project_id == project_id)
        return await self._page(statement, API_TOKENS, API_TOKENS.c.token_id, page)

    async def _first(self, statement: Select[Any]) -> Any | None:
        async with self.engine.connect() as connection:
            return (await connection.execute(statement)).first()

    async def _insert(self, table: Table, values: dict[str, Any]) -> bool:
        """False when a unique key is taken."""
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(table).values(**values))
        except IntegrityError:
            return False
        return True

    async def _page(
        self, statement: Select[Any], table: Table, key: ColumnElement[Any], page: Page
    ) -> list[Any]:
        """Newest first by (create_time, key), after the page token's position; one row
        more than the page holds, so the caller can tell whether another page follows."""
        after = page.after_time()
        if after is not None:
            created = table.c.create_time
            statement = statement.where(
                or_(created < after[0], and_(created == after[0], key < after[1]))
            )
        statement = statement.order_by(table.c.create_time.desc(), key.desc()).limit(page.size + 1)
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).all())

    async def revoke(self, project_id: str, token_id: str, now: datetime) -> Any | None:
        """Revoke (once: a second revoke keeps the first time); the row, or None."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(API_TOKENS)
                .where(
                    API_TOKENS.c.token_id == token_id,
                    API_TOKENS.c.project_id == project_id,
                    API_TOKENS.c.revoke_time.is_(None),
                )
                .values(revoke_time=now)
            )
            result = await connection.execute(
                select(API_TOKENS).where(
                    API_TOKENS.c.token_id == token_id, API_TOKENS.c.project_id == project_id
                )
            )
            return result.first()

    async def authenticate(self, token: str) -> Any:
        """The row of a valid token; API_TOKEN_INVALID or API_TOKEN_EXPIRED otherwise."""
        parsed = access.parse_api_token(token)
        row = await self.token(parsed[0]) if parsed is not None else None
        # Hash and compare even when no row matched, so timing tells nothing of the id.
        expected = row.secret_sha256 if row is not None else "0" * 64
        presented = secret_hash(parsed[1] if parsed is not None else "")
        if row is None or not hmac.compare_digest(presented, expected) or row.revoke_time:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_TOKEN_INVALID,
                "the API token is not valid (unknown, malformed or revoked)",
            )
        if row.expire_time <= datetime.now(UTC):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_TOKEN_EXPIRED,
                "the API token has expired; ask an admin of its project for a new one",
            )
        return row

    async def caller_of(self, token: str) -> Caller:
        """The Jobs service's own resolver of API tokens (no cache: it owns the rows)."""
        row = await self.authenticate(token)
        return Caller(row.project_id, Role(row.role))


class AccessServicer(access_service_pb2_grpc.AccessServiceServicer):
    def __init__(self, settings: JobsSettings, store: AccessStore) -> None:
        self._settings = settings
        self._store = store

    async def _visible_project(self, project_id: str) -> Any:
        """The project's row when the caller may manage it; as unknown otherwise."""
        check_project_id(project_id)
        row = await self._store.project(project_id)
        if row is None or not _may_manage(current_caller(), project_id):
            raise _project_not_found(project_id)
        return row

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateProjectResponse:
        caller = current_caller()
        if not _is_operator(caller):
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                reasons.ROLE_INSUFFICIENT,
                "only an admin of the default project creates projects",
            )
        project_id = check_project_id(request.project_id)
        display_name = _check_display_name(request.display_name)
        request_id = check_request_id(request.request_id, reasons.REQUEST_ID_INVALID)
        values = {
            "project_id": project_id,
            "display_name": display_name,
            "request_id": request_id,
            "create_time": datetime.now(UTC),
        }
        if not await self._store.insert_project(values):
            existing = await self._store.project(project_id)
            if existing is None or request_id is None or existing.request_id != request_id:
                raise ServiceError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    reasons.PROJECT_ALREADY_EXISTS,
                    f"project {project_id} already exists",
                    {"project_id": project_id},
                )
            return pb.CreateProjectResponse(project=_project(existing))
        return pb.CreateProjectResponse(project=_project(await self._visible_project(project_id)))

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProjectResponse:
        return pb.GetProjectResponse(
            project=_project(await self._visible_project(request.project_id))
        )

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListProjectsResponse:
        caller = current_caller()
        only = None if _is_operator(caller) else caller.project
        page = parse_page(request.page_size, request.page_token, {"only": only})
        rows = await self._store.projects(page, only)
        items, token = page_tail(
            rows, page, lambda row: (row.create_time, row.project_id), {"only": only}
        )
        return pb.ListProjectsResponse(
            projects=[_project(row) for row in items], next_page_token=token
        )

    async def CreateApiToken(
        self, request: pb.CreateApiTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateApiTokenResponse:
        project = await self._visible_project(request.project_id)
        role = self._role(request.role)
        display_name = _check_display_name(request.display_name)
        request_id = check_request_id(request.request_id, reasons.REQUEST_ID_INVALID)
        lifetime = self._lifetime(request)
        if request_id is not None:
            earlier = await self._store.token_by_request_id(request_id)
            if earlier is not None and earlier.project_id == project.project_id:
                return pb.CreateApiTokenResponse(api_token=_api_token(earlier))
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        values = {
            "token_id": token_id,
            "project_id": project.project_id,
            "role": int(role),
            "display_name": display_name,
            "secret_sha256": secret_hash(secret),
            "request_id": request_id,
            "create_time": now,
            "expire_time": now + lifetime,
            "revoke_time": None,
        }
        if not await self._store.insert_token(values):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.REQUEST_ID_IN_USE,
                "another project's token was created with this request_id",
            )
        row = await self._store.token(token_id)
        return pb.CreateApiTokenResponse(
            api_token=_api_token(row),
            secret=f"{access.API_TOKEN_PREFIX}{token_id}_{secret}",
        )

    def _role(self, role: int) -> Role:
        if role not in (Role.VIEWER, Role.TRAINER, Role.ADMIN):
            raise invalid_argument(
                reasons.API_TOKEN_ROLE_INVALID,
                "role must be ROLE_VIEWER, ROLE_TRAINER or ROLE_ADMIN",
            )
        return Role(role)

    def _lifetime(self, request: pb.CreateApiTokenRequest) -> timedelta:
        longest = timedelta(seconds=self._settings.api_token_max_lifetime_seconds)
        if not request.HasField("expires_in"):
            return timedelta(seconds=self._settings.api_token_default_lifetime_seconds)
        lifetime = request.expires_in.ToTimedelta()
        if lifetime <= timedelta(0) or lifetime > longest:
            raise invalid_argument(
                reasons.API_TOKEN_LIFETIME_INVALID,
                f"expires_in must be positive and at most {int(longest.total_seconds())} "
                "seconds (MODELYARD_JOBS_API_TOKEN_MAX_LIFETIME_SECONDS)",
                limit_seconds=str(int(longest.total_seconds())),
            )
        return lifetime

    async def ListApiTokens(
        self, request: pb.ListApiTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListApiTokensResponse:
        project = await self._visible_project(request.project_id)
        filters = {"project": project.project_id}
        page = parse_page(request.page_size, request.page_token, filters)
        rows = await self._store.tokens(project.project_id, page)
        items, token = page_tail(rows, page, lambda row: (row.create_time, row.token_id), filters)
        return pb.ListApiTokensResponse(
            api_tokens=[_api_token(row) for row in items], next_page_token=token
        )

    async def DeleteApiToken(
        self, request: pb.DeleteApiTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteApiTokenResponse:
        project = await self._visible_project(request.project_id)
        row = await self._store.revoke(project.project_id, request.token_id, datetime.now(UTC))
        if row is None:
            raise not_found(
                reasons.API_TOKEN_NOT_FOUND,
                f"project {project.project_id} has no API token {request.token_id[:64]}",
                project_id=project.project_id,
            )
        return pb.DeleteApiTokenResponse(api_token=_api_token(row))

    async def AuthenticateApiToken(
        self, request: pb.AuthenticateApiTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuthenticateApiTokenResponse:
        row = await self._store.authenticate(request.token)
        return pb.AuthenticateApiTokenResponse(
            project_id=row.project_id,
            role=row.role,
            token_id=row.token_id,
            expire_time=_timestamp(row.expire_time),
        )
