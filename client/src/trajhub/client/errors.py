"""Exceptions raised by the trajhub client; each carries the server's reason.

They subclass the built-in exception a Python user expects for the same situation
(``IndexError`` for a frame index out of range, ``ValueError`` for a refused request,
``ConnectionError`` when the server cannot be reached), so list-style code works.
"""

from __future__ import annotations


class TrajhubError(Exception):
    """Base class. ``status`` is the HTTP status (None without a response)."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.url = url
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class FrameIndexError(TrajhubError, IndexError):
    """A frame index out of range (HTTP 404 on a frames endpoint)."""


class RoomNotFound(TrajhubError, KeyError):
    """The room does not exist (HTTP 404 on the room itself)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class ConflictError(TrajhubError):
    """The frames changed under an edit (HTTP 409); ``detail`` has the server's data."""


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
