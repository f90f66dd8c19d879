"""What each connected socket holds: its author, its locks and its presenter tokens.

Kept in memory on the gateway (one ``Sessions`` per Gateway object) so that a socket's
locks and presenter tokens are released when it disconnects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANONYMOUS = "anonymous"
MAX_AUTHOR = 200


@dataclass
class Session:
    author: str
    locks: dict[str, str] = field(default_factory=dict)
    """lock token -> room"""
    presenting: dict[str, str] = field(default_factory=dict)
    """room -> presenter token"""

    def holds_lock(self, room: str, token: str) -> bool:
        return self.locks.get(token) == room


def author_from_auth(auth: Any) -> str:
    """The author named in a connect ``auth`` payload (``{"author": name}``); raises
    ValueError with the reason for anything else."""
    if auth is None:
        return ANONYMOUS
    if not isinstance(auth, dict):
        raise ValueError('auth must be an object like {"author": "<name>"}')
    author = auth.get("author")
    if author is None:
        return ANONYMOUS
    if not isinstance(author, str) or not 1 <= len(author) <= MAX_AUTHOR:
        raise ValueError(f"auth.author must be a string of 1..{MAX_AUTHOR} characters")
    return author


class Sessions:
    def __init__(self) -> None:
        self._by_sid: dict[str, Session] = {}

    def open(self, sid: str, author: str) -> Session:
        session = Session(author=author)
        self._by_sid[sid] = session
        return session

    def get(self, sid: str) -> Session | None:
        return self._by_sid.get(sid)

    def close(self, sid: str) -> Session | None:
        """Forget the socket; returns what it held (to release)."""
        return self._by_sid.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_sid)
