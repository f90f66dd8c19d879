"""Query-string selections of frames (``indices`` or ``start/stop/step``) and keys."""

from __future__ import annotations

from dataclasses import dataclass

from trajhub.gateway.errors import ApiError
from trajhub.shared.names import InvalidName, check_key_name

MAX_QUERY_INDICES = 1_000_000


@dataclass(frozen=True)
class Selection:
    """Either explicit ``indices`` or a Python slice (all None: every frame)."""

    indices: list[int] | None = None
    start: int | None = None
    stop: int | None = None
    step: int | None = None

    @property
    def is_slice(self) -> bool:
        return self.indices is None


def parse_indices(text: str) -> list[int]:
    text = text.strip()
    if not text:
        return []
    parts = text.split(",")
    if len(parts) > MAX_QUERY_INDICES:
        raise ApiError(422, f"too many indices ({len(parts)}); at most {MAX_QUERY_INDICES}")
    out = []
    for part in parts:
        part = part.strip()
        if not (part.isascii() and part.isdigit()):  # refuses '-1' too
            raise ApiError(422, f"indices must be comma-separated non-negative integers; "
                                f"got {part[:40]!r}")
        out.append(int(part))
    return out


def parse_selection(indices: str | None, start: int | None, stop: int | None,
                    step: int | None) -> Selection:
    if indices is not None:
        if start is not None or stop is not None or step is not None:
            raise ApiError(422, "give either indices or start/stop/step, not both")
        return Selection(indices=parse_indices(indices))
    if step == 0:
        raise ApiError(422, "step must not be zero")
    return Selection(start=start, stop=stop, step=step)


def parse_keys(keys: str | None) -> list[str] | None:
    """``keys=positions,numbers`` -> validated, de-duplicated key names (None: all keys)."""
    if keys is None:
        return None
    out: list[str] = []
    for key in keys.split(","):
        key = key.strip()
        try:
            check_key_name(key)
        except InvalidName as exc:
            raise ApiError(422, str(exc)) from None
        if key not in out:
            out.append(key)
    return out
