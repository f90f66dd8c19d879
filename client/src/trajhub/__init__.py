"""trajhub: share, edit and play back molecular trajectories live."""

from pkgutil import extend_path

# The other trajhub.* distributions (shared, services) are namespace portions.
__path__ = extend_path(__path__, __name__)

from trajhub.client.room import Room

__all__ = ["Room"]
