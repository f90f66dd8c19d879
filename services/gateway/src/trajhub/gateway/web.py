"""The browser viewer: the built ``web/`` assets (``static/``), served at ``/rooms/{room}``
(the 3D viewer) and ``/assets/*``; ``home.py`` serves the same page at ``/`` (room list).

The assets are built by the package's hatch build hook (``hatch_build.py``) on install;
if they are missing, ``/`` says how to build them instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_DIR = STATIC_DIR / "assets"

router = APIRouter(include_in_schema=False)

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trajhub: viewer not built</title></head>
<body style="font:15px system-ui,sans-serif;max-width:46rem;margin:3rem auto">
<h1>trajhub is running, but the browser viewer is not built</h1>
<p>The viewer's assets were not found in <code>{static}</code>. Build them (Node.js 20+ and
npm are needed) with</p>
<pre>cd web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>or reinstall the gateway package, which builds them:
<code>uv sync --reinstall-package trajhub-gateway</code>. The JSON API works meanwhile:
<a href="/api/v1/rooms">/api/v1/rooms</a>, <a href="/docs">/docs</a>.</p>
</body></html>"""


NO_CACHE = {"Cache-Control": "no-cache"}  # index.html names the current build's assets


def missing_page() -> HTMLResponse:
    return HTMLResponse(_MISSING.format(static=STATIC_DIR), status_code=503)


def index_html() -> str | None:
    """The viewer's ``index.html`` (it routes by URL), or None if it is not built."""
    try:
        return (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def index_page() -> FileResponse | HTMLResponse:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return missing_page()
    return FileResponse(index, headers=NO_CACHE)


@router.get("/rooms/{room}", response_model=None)
async def room_page(room: str) -> FileResponse | HTMLResponse:
    return index_page()


@router.get("/assets/{name}")
async def asset(name: str) -> FileResponse:
    path = (ASSETS_DIR / name).resolve()
    if path.parent != ASSETS_DIR or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no asset {name}")
    # built file names carry a content hash, so they never change
    return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})
