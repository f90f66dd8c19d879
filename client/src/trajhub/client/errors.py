"""Exceptions raised by the trajhub client; each carries the server's reason.

They subclass the built-in exception a Python user expects for the same situation
(``IndexError`` for a frame index out of range, ``ValueError`` for a refused request,
``ConnectionError`` when the server cannot be reached), so list-style code works.
"""

from __future__ import annotations

from typing import Any


class TrajhubError(Exception):
    """Base class. ``status`` is the HTTP status (None without a response), ``detail``
    the server's reason and ``body`` its whole (JSON) error answer, if any."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 detail: object = None, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url
        self.detail = detail
        self.body = body

    def __str__(self) -> str:
        return self.message


class FrameIndexError(TrajhubError, IndexError):
    """A frame index out of range (HTTP 404 on a frames endpoint)."""


class RoomNotFound(TrajhubError, KeyError):
    """The room does not exist (HTTP 404 on the room itself)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class ConflictError(TrajhubError):
    """The frames changed under an edit (HTTP 409); nothing was written.

    ``detail`` is the server's reason; ``conflicts`` lists the frames that changed
    (``{"index", "frame_id", "expected", "actual", "hash"}`` each) and, for an undo or
    redo, ``later`` names the later edit that prevents it (``{"seq", "kind", "author",
    "frame_id"}``); ``body`` is the whole answer.
    """

    @property
    def conflicts(self) -> list[dict[str, Any]]:
        value = self.body.get("conflicts") if isinstance(self.body, dict) else None
        return value if isinstance(value, list) else []

    @property
    def later(self) -> dict[str, Any] | None:
        value = self.body.get("later") if isinstance(self.body, dict) else None
        return value if isinstance(value, dict) else None


class LockedError(TrajhubError):
    """Someone else holds a lock (or the presenter token) on what a request wanted
    (HTTP 423), or a lock of ours was lost; nothing was written.

    ``holder`` is who holds it, ``{"author", "fence", "expires_at" (ms since the epoch),
    "message", "target"}``, when the server named one.
    """

    @property
    def holder(self) -> dict[str, Any] | None:
        value = self.body.get("holder") if isinstance(self.body, dict) else None
        return value if isinstance(value, dict) else None


class NothingToUndo(TrajhubError, LookupError):
    """``Room.undo()`` found no edit of this author left to undo (HTTP 404)."""


class NothingToRedo(TrajhubError, LookupError):
    """``Room.redo()`` found no undo of this author left to redo (HTTP 404)."""


class PayloadTooLarge(TrajhubError):
    """A request body above the server's limit (HTTP 413): a single frame is too big."""


class BadRequest(TrajhubError, ValueError):
    """The server refused the request as invalid (HTTP 400/415/422)."""


class ServerUnavailable(TrajhubError):
    """The server kept answering 503 (busy) after the retries."""


class ServerError(TrajhubError):
    """Any other error status from the server."""


class TrajhubConnectionError(TrajhubError, ConnectionError):
    """The server could not be reached (after retrying); the message has the URL."""


class HistoryGone(TrajhubError, LookupError):
    """A past seq is beyond the room's retention (HTTP 410): trimmed and not archived,
    or its frames were dropped by compaction."""
