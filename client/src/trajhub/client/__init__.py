"""The trajhub Python client: ``Room`` (a room as a list of ase.Atoms), its ``Lock``,
the frame conversion and the exceptions it raises."""

from trajhub.client.convert import atoms_to_frame, frame_to_atoms
from trajhub.client.errors import (
    BadRequest,
    ConflictError,
    FrameIndexError,
    HistoryGone,
    LockedError,
    NothingToRedo,
    NothingToUndo,
    PayloadTooLarge,
    RoomNotFound,
    ServerError,
    ServerUnavailable,
    TrajhubConnectionError,
    TrajhubError,
)
from trajhub.client.locks import Lock
from trajhub.client.room import Room

__all__ = [
    "BadRequest",
    "ConflictError",
    "FrameIndexError",
    "HistoryGone",
    "Lock",
    "LockedError",
    "NothingToRedo",
    "NothingToUndo",
    "PayloadTooLarge",
    "Room",
    "RoomNotFound",
    "ServerError",
    "ServerUnavailable",
    "TrajhubConnectionError",
    "TrajhubError",
    "atoms_to_frame",
    "frame_to_atoms",
]
