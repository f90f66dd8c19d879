"""trajhub control: atomic per-room commits (Lua) and control's HTTP API."""

from trajhub.control.control import Control
from trajhub.control.http import ControlUnavailable, HttpControl, create_app
from trajhub.control.index import IndexOutOfRange, IndexReader, IndexView

__all__ = [
    "Control",
    "ControlUnavailable",
    "HttpControl",
    "IndexOutOfRange",
    "IndexReader",
    "IndexView",
    "create_app",
]
