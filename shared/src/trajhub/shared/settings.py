"""Settings, read from ``TRAJHUB_*`` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="TRAJHUB_REDIS_URL")
    storage_url: str = Field(str(Path("data") / "zarr"), description=(
        "TRAJHUB_STORAGE_URL: a directory, file://DIR, memory:// or an fsspec URL"))
    control_url: str = Field("", description=(
        "TRAJHUB_CONTROL_URL: control's HTTP address; empty runs control in-process"))
    host: str = Field("127.0.0.1", description="TRAJHUB_HOST")
    port: int = Field(5000, description="TRAJHUB_PORT")
    max_upload_mb: float = Field(512.0, description="TRAJHUB_MAX_UPLOAD_MB: largest request body")
    staging_ttl_s: int = Field(
        3600, description="TRAJHUB_STAGING_TTL_S: life of an uncommitted upload")
    staging_budget_mb: float = Field(2048.0, description=(
        "TRAJHUB_STAGING_BUDGET_MB: refuse uploads (503) when Redis uses more than this"))
    staging_pack_mb: float = Field(1.0, ge=0, description=(
        "TRAJHUB_STAGING_PACK_MB: an upload whose frames total at least this is staged as "
        "one pack object in the frame store (<room>/_staging/), with small markers in "
        "Redis, rather than in Redis itself (0: always in Redis)"))
    staging_fsync: bool = Field(True, description=(
        "TRAJHUB_STAGING_FSYNC: fdatasync each pack before its commit is acknowledged "
        "(local directory stores)"))
    cache_mb: float = Field(64.0, ge=0, description=(
        "TRAJHUB_CACHE_MB: the gateway's in-memory cache of encoded frames (0 disables)"))
    index_watch: bool = Field(True, description=(
        "TRAJHUB_INDEX_WATCH: the gateway answers a repeated index read from memory "
        "until Redis says the room moved (client-side tracking on one connection); "
        "false: every read asks Redis"))
    apply_coalesce_ms: float = Field(50.0, ge=0, description=(
        "TRAJHUB_APPLY_COALESCE_MS: while small edits stream into a room faster than "
        "storage writes them, storage waits this long between writes and takes what came "
        "meanwhile in one write (its cost is per write, not per frame); a lone edit is "
        "written at once (0: never wait)"))
    undo_retention: int = Field(10_000, ge=0, description=(
        "TRAJHUB_UNDO_RETENTION: undoable edits kept per author and room (0: no limit)"))
    snapshot_every_events: int = Field(1000, ge=1, description=(
        "TRAJHUB_SNAPSHOT_EVERY_EVENTS: the snapshotter snapshots a room's index, archives "
        "its events and trims its stream after this many events"))
    snapshot_every_bytes: int = Field(64 * 1024 * 1024, ge=0, description=(
        "TRAJHUB_SNAPSHOT_EVERY_BYTES: ... or after this many bytes of events (0: only by "
        "count)"))
    stream_keep_events: int = Field(10_000, ge=0, description=(
        "TRAJHUB_STREAM_KEEP_EVENTS: events before a room's latest snapshot kept in its "
        "Redis stream (older ones are archived, then trimmed); undo reaches back this far"))
    archive_blobs: bool = Field(False, description=(
        "TRAJHUB_ARCHIVE_BLOBS: storage keeps a copy of every frame it applies as a "
        "content-addressed object <room>/_history/blob/<hash> in the store, so that "
        "`trajhub rebuild` can restore a room whose Zarr data arrays are lost"))
    default_room: str = Field("", description=(
        "TRAJHUB_DEFAULT_ROOM: a room every new room starts from (a fork, nothing copied) "
        "when a viewer joins it; empty: new rooms start empty"))
    admin_user: str = Field("", description=(
        "TRAJHUB_ADMIN_USER: with TRAJHUB_ADMIN_PASSWORD, the HTTP Basic credentials the "
        "gateway requires on its admin endpoints (compaction); empty: not required"))
    admin_password: str = Field("", repr=False, description=(
        "TRAJHUB_ADMIN_PASSWORD: the admin password (see TRAJHUB_ADMIN_USER)"))
    consumer_name: str = Field(default_factory=_default_consumer,
                               description="TRAJHUB_CONSUMER_NAME: this replica's consumer name")
    log_level: str = Field("INFO", description="TRAJHUB_LOG_LEVEL")
    access_log: bool = Field(False, description=(
        "TRAJHUB_ACCESS_LOG: log every HTTP request (uvicorn's access log). Off by default: "
        "a viewer scrubbing at 60 Hz makes 60 lines a second, and formatting them took a "
        "quarter of a single-frame read's server time"))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = f"TRAJHUB_{name.upper()}"
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
