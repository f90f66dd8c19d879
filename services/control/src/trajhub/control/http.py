"""Control's HTTP API (a Starlette app) and the ControlPort that calls it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

import httpx
import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trajhub.control.control import Control
from trajhub.shared.events import Command, CommitResult
from trajhub.shared.redis_util import async_client
from trajhub.shared.settings import Settings

COMMAND = TypeAdapter[Command](Command)
JSON = "application/json"


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


async def commit(request: Request) -> Response:
    try:
        command = COMMAND.validate_json(await request.body())
    except ValidationError as exc:
        result = CommitResult(status="invalid", reason=_reason(exc))
    else:
        result = await _control(request).commit(command)
    return Response(result.model_dump_json(), status_code=result.http_status, media_type=JSON)


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


def create_app(settings: Settings, *, redis: aioredis.Redis | None = None) -> Starlette:
    """The control API. Without ``redis`` the app opens (and closes) its own client
    to ``settings.redis_url``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis if redis is not None else async_client(settings.redis_url)
        app.state.control = Control(client)
        try:
            yield
        finally:
            if redis is None:
                await client.aclose()

    return Starlette(
        routes=[
            Route("/v1/commit", commit, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={RedisConnectionError: _redis_unavailable,
                            RedisTimeoutError: _redis_unavailable},
        lifespan=lifespan,
    )


class ControlUnavailable(RuntimeError):
    """Control could not be reached or did not answer with a commit result."""


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

    async def commit(self, command: Command) -> CommitResult:
        try:
            response = await self._client.post("/v1/commit", content=command.model_dump_json())
        except httpx.HTTPError as exc:
            raise ControlUnavailable(
                f"control at {self.base_url} is unreachable: {exc!r}") from exc
        try:
            result = CommitResult.model_validate_json(response.content)
        except ValidationError:
            raise ControlUnavailable(
                f"control at {self.base_url} answered {response.status_code}: "
                f"{response.text[:300]}") from None
        return result

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpControl:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


