"""trajhub gateway: the HTTP data channel and the Socket.IO control channel."""

from trajhub.gateway.app import create_app

__all__ = ["create_app"]
