"""The page at ``/``: the browser viewer's room list (``web.py``), with the rooms also
rendered server-side in a ``<noscript>`` block for clients without JavaScript."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from trajhub.gateway.web import NO_CACHE, index_html, missing_page

router = APIRouter(include_in_schema=False)


def rooms_table(rooms: list[tuple[str, int, int]]) -> str:
    if not rooms:
        return "<p>No rooms yet.</p>"
    rows = "".join(f'<tr><td><a href="/rooms/{escape(r)}">{escape(r)}</a></td><td>{n}</td></tr>'
                   for r, n, _ in sorted(rooms))
    return f"<table><tr><th>room</th><th>frames</th></tr>{rows}</table>"


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    html = index_html()
    if html is None:
        return missing_page()
    rooms = await request.app.state.gateway.index.list_rooms()
    fallback = (f"<noscript><h1>trajhub is running</h1>{rooms_table(rooms)}"
                '<p>The 3D viewer needs JavaScript. API: <a href="/api/v1/rooms">'
                "/api/v1/rooms</a></p></noscript>")
    return HTMLResponse(html.replace("</body>", f"{fallback}\n</body>", 1), headers=NO_CACHE)
