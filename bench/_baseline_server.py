"""A bare HTTP endpoint on uvicorn that moves bytes and nothing else (the raw baseline)."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_BLOBS: dict[int, bytes] = {}


async def sink(request: Request) -> Response:
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return JSONResponse({"received": n}, status_code=201)


async def source(request: Request) -> Response:
    n = int(request.query_params["n"])
    if n not in _BLOBS:
        _BLOBS[n] = b"\x01" * n
    return Response(_BLOBS[n], media_type="application/msgpack")


async def tiny(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(routes=[Route("/sink", sink, methods=["POST"]), Route("/source", source),
                        Route("/tiny", tiny)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http="httptools")
