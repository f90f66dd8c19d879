"""The page at ``/``: what is running and which rooms exist (the 3D viewer replaces it)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trajhub</title>
<style>body{{font:15px system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem}}
td,th{{padding:.2rem .8rem;text-align:left}}code{{background:#f3f3f3;padding:0 .2rem}}</style>
</head><body>
<h1>trajhub is running</h1>
<p>Connect from Python: <code>from trajhub import Room; vis = Room("{base}", room="demo")</code></p>
<h2>Rooms</h2>
{rooms}
<p>API: <a href="/api/v1/rooms">/api/v1/rooms</a> &middot; <a href="/docs">OpenAPI docs</a>
&middot; <a href="/readyz">/readyz</a></p>
</body></html>"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def home(request: Request) -> HTMLResponse:
    rooms = sorted(await request.app.state.gateway.index.list_rooms())
    if rooms:
        rows = "".join(
            f'<tr><td><a href="/api/v1/rooms/{escape(r)}">{escape(r)}</a></td>'
            f"<td>{n}</td><td>{s}</td></tr>" for r, n, s in rooms)
        table = f"<table><tr><th>room</th><th>frames</th><th>seq</th></tr>{rows}</table>"
    else:
        table = "<p>No rooms yet.</p>"
    base = str(request.base_url).rstrip("/")
    return HTMLResponse(_PAGE.format(base=escape(base), rooms=table))
