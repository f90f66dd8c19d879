"""trajhub: share, edit and play back molecular trajectories live."""

from __future__ import annotations

from pkgutil import extend_path
from typing import TYPE_CHECKING, Any

# The other trajhub.* distributions (shared, services) are namespace portions.
__path__ = extend_path(__path__, __name__)

if TYPE_CHECKING:
    from trajhub.client.room import Room

__all__ = ["Room"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the client pulls in ASE (and with it SciPy, ~65 MB), which
    # the servers (``trajhub serve`` lives in this package too) must not carry.
    if name == "Room":
        from trajhub.client.room import Room

        return Room
    raise AttributeError(f"module 'trajhub' has no attribute {name!r}")
