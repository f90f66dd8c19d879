"""Control's HTTP API (a Starlette app) and the ControlPort that calls it.

One ``POST /v1/...`` route per ControlPort method: the body is the method's request
model as JSON, the answer its result model as JSON with the result's HTTP status
(``list``/``get`` answer 200). A body that is not JSON or breaks the model gets 422
``{"status": "invalid", "reason"}`` (the commit/lock/presenter result shapes).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trajhub.control.control import Clock, Control
from trajhub.shared.collab import (
    LockAcquire,
    LockList,
    LockRelease,
    LockRenew,
    LockResult,
    PresenterRelease,
    PresenterRequest,
    PresenterResult,
    SetStep,
    StepState,
)
from trajhub.shared.events import Command, CommitResult, ForkRoom
from trajhub.shared.names import check_room_name
from trajhub.shared.redis_util import async_client
from trajhub.shared.settings import Settings

JSON = "application/json"
Res = TypeVar("Res", bound=BaseModel)


class RoomQuery(BaseModel):
    """The body of ``/v1/locks/list`` and ``/v1/step/get``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    room: str

    _r = field_validator("room")(check_room_name)


Answer = CommitResult | LockResult | PresenterResult | LockList | StepState
Parser = Callable[[bytes], Any]
Runner = Callable[[Control, Any], Awaitable[Answer]]
Invalid = Callable[[str], BaseModel]


def _parser(model: type[BaseModel] | TypeAdapter[Any]) -> Parser:
    return model.validate_json if isinstance(model, TypeAdapter) else model.model_validate_json


# path -> (parse the body, run it on control, the 422 answer). ``status`` and ``reason``
# are in every invalid answer; list/get have no result shape with them, so use LockResult's.
_ROUTES: dict[str, tuple[Parser, Runner, Invalid]] = {
    "/v1/commit": (_parser(TypeAdapter[Command](Command)), Control.commit,
                   lambda r: CommitResult(status="invalid", reason=r)),
    "/v1/fork": (_parser(ForkRoom), Control.fork,
                 lambda r: CommitResult(status="invalid", reason=r)),
    "/v1/locks/acquire": (_parser(LockAcquire), Control.acquire_lock,
                          lambda r: LockResult(status="invalid", reason=r)),
    "/v1/locks/renew": (_parser(LockRenew), Control.renew_lock,
                        lambda r: LockResult(status="invalid", reason=r)),
    "/v1/locks/release": (_parser(LockRelease), Control.release_lock,
                          lambda r: LockResult(status="invalid", reason=r)),
    "/v1/locks/list": (_parser(RoomQuery), lambda c, q: c.list_locks(q.room),
                       lambda r: LockResult(status="invalid", reason=r)),
    "/v1/presenter/request": (_parser(PresenterRequest), Control.request_presenter,
                              lambda r: PresenterResult(status="invalid", reason=r)),
    "/v1/presenter/renew": (_parser(PresenterRequest), Control.renew_presenter,
                            lambda r: PresenterResult(status="invalid", reason=r)),
    "/v1/presenter/release": (_parser(PresenterRelease), Control.release_presenter,
                              lambda r: PresenterResult(status="invalid", reason=r)),
    "/v1/step/set": (_parser(SetStep), Control.set_step,
                     lambda r: PresenterResult(status="invalid", reason=r)),
    "/v1/step/get": (_parser(RoomQuery), lambda c, q: c.get_step(q.room),
                     lambda r: LockResult(status="invalid", reason=r)),
}


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _control(request: Request) -> Control:
    control: Control = request.app.state.control
    return control


def _json(model: BaseModel, status: int) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type=JSON)


def _endpoint(parse: Parser, run: Runner,
              invalid: Invalid) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            body = parse(await request.body())
        except ValidationError as exc:
            return _json(invalid(_reason(exc)), 422)
        result = await run(_control(request), body)
        return _json(result, getattr(result, "http_status", 200))
    return endpoint


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await _control(request).redis.ping()
    except (RedisError, OSError) as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"redis unavailable: {exc}"}, status_code=503)


def create_app(settings: Settings, *, redis: aioredis.Redis | None = None,
               clock: Clock | None = None) -> Starlette:
    """The control API. Without ``redis`` the app opens (and closes) its own client
    to ``settings.redis_url``; ``clock`` replaces the Redis server's clock (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis if redis is not None else async_client(settings.redis_url)
        app.state.control = Control(client, clock=clock)
        try:
            yield
        finally:
            if redis is None:
                await client.aclose()

    routes = [Route(path, _endpoint(*spec), methods=["POST"]) for path, spec in _ROUTES.items()]
    return Starlette(
        routes=[*routes,
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"])],
        exception_handlers={RedisConnectionError: _redis_unavailable,
                            RedisTimeoutError: _redis_unavailable},
        lifespan=lifespan,
    )


class ControlUnavailable(RuntimeError):
    """Control could not be reached or did not answer with a result."""


class HttpControl:
    """ControlPort over HTTP to control replicas (one keep-alive connection pool)."""

    def __init__(self, base_url: str | Settings, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        url = base_url.control_url if isinstance(base_url, Settings) else base_url
        if not url:
            raise ValueError("HttpControl needs control's URL (TRAJHUB_CONTROL_URL)")
        self.base_url = url.rstrip("/")
        # retries=1 only repeats failed connection attempts: nothing was sent yet.
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=1),
            headers={"content-type": JSON})
        self.moved: Callable[[str], None] | None = None
        """As ``Control.moved``: told a room after each commit or fork of it returns."""

    async def _call(self, path: str, body: str, model: type[Res]) -> Res:
        try:
            response = await self._client.post(path, content=body)
        except httpx.HTTPError as exc:
            raise ControlUnavailable(
                f"control at {self.base_url} is unreachable: {exc!r}") from exc
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise ControlUnavailable(f"control at {self.base_url} answered "
                                     f"{response.status_code}: {response.text[:300]}") from None

    async def commit(self, command: Command) -> CommitResult:
        try:
            return await self._call("/v1/commit", command.model_dump_json(), CommitResult)
        finally:
            if self.moved is not None:
                self.moved(command.room)

    async def fork(self, request: ForkRoom) -> CommitResult:
        try:
            return await self._call("/v1/fork", request.model_dump_json(), CommitResult)
        finally:
            if self.moved is not None:
                self.moved(request.room)

    async def acquire_lock(self, request: LockAcquire) -> LockResult:
        return await self._call("/v1/locks/acquire", request.model_dump_json(), LockResult)

    async def renew_lock(self, request: LockRenew) -> LockResult:
        return await self._call("/v1/locks/renew", request.model_dump_json(), LockResult)

    async def release_lock(self, request: LockRelease) -> LockResult:
        return await self._call("/v1/locks/release", request.model_dump_json(), LockResult)

    async def list_locks(self, room: str) -> LockList:
        return await self._call("/v1/locks/list", _room_body(room), LockList)

    async def request_presenter(self, request: PresenterRequest) -> PresenterResult:
        return await self._call("/v1/presenter/request", request.model_dump_json(),
                                PresenterResult)

    async def renew_presenter(self, request: PresenterRequest) -> PresenterResult:
        return await self._call("/v1/presenter/renew", request.model_dump_json(),
                                PresenterResult)

    async def release_presenter(self, request: PresenterRelease) -> PresenterResult:
        return await self._call("/v1/presenter/release", request.model_dump_json(),
                                PresenterResult)

    async def set_step(self, request: SetStep) -> PresenterResult:
        return await self._call("/v1/step/set", request.model_dump_json(), PresenterResult)

    async def get_step(self, room: str) -> StepState:
        return await self._call("/v1/step/get", _room_body(room), StepState)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpControl:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def _room_body(room: str) -> str:
    """``{"room": room}``; a bad name raises InvalidName here, as control would refuse it."""
    return RoomQuery(room=check_room_name(room)).model_dump_json()
