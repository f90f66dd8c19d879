"""HTTP errors: every error response is JSON ``{"detail": "<clear reason>", ...}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
RETRY_AFTER_S = "2"


class NotStarted(RuntimeError):
    """A gateway part was used before the gateway started (or after it stopped)."""


class ApiError(Exception):
    """An error answered with ``status`` and ``{"detail": detail, **extra}``."""

    def __init__(self, status: int, detail: str, *, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def _error_response(status: int, detail: str, headers: Mapping[str, str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, **(extra or {})}, status_code=status,
                        headers=dict(headers or {}))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error_response(exc.status, exc.detail, exc.headers, exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error_response(exc.status_code, str(exc.detail), exc.headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else
                     str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _error_response(422, describe_validation_error(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: backend unavailable: %r", request.method, request.url.path, exc)
    return _error_response(503, f"a backend is unavailable: {exc}; retry later",
                           {"Retry-After": RETRY_AFTER_S})


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_response(500, f"internal error: {type(exc).__name__}")


def install_error_handlers(app: FastAPI,
                           unavailable: tuple[type[Exception], ...] = ()) -> None:
    """JSON errors everywhere; ``unavailable`` (plus Redis and OS errors) answer 503."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for kind in (RedisError, ConnectionError, TimeoutError, *unavailable):
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(Exception, _internal)
