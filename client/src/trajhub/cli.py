"""The ``trajhub`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trajhub", description=(
        "Share, edit and play back molecular trajectories live."))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run every service in one process (laptop mode)")
    serve.add_argument("--host", default=os.environ.get("TRAJHUB_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("TRAJHUB_PORT", "5000")))
    serve.add_argument("--data-dir", default=os.environ.get("TRAJHUB_DATA_DIR", "trajhub-data"),
                       help="where the embedded Redis (AOF) and the Zarr store live")
    serve.add_argument("--redis-url", default=os.environ.get("TRAJHUB_REDIS_URL"),
                       help="use this Redis instead of starting the embedded redis-server")
    _add_time_travel(sub)
    snap = sub.add_parser("snapshot", help=(
        "snapshot a room's index now, archive its events and trim its event stream "
        "(talks to Redis and the store directly)"))
    snap.add_argument("room")
    snap.add_argument("--redis-url", default=None, help="Redis (TRAJHUB_REDIS_URL)")
    snap.add_argument("--storage-url", default=None, help="the Zarr store (TRAJHUB_STORAGE_URL)")
    _add_rebuild(sub)
    _add_compact(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from trajhub.serve import serve

        serve(args.host, args.port, args.data_dir, args.redis_url)
        return 0
    if args.command in ("history", "replay"):
        return _run_time_travel(args)
    if args.command == "snapshot":
        return _run_snapshot(args)
    if args.command == "rebuild":
        return _run_rebuild(args)
    if args.command == "compact":
        return _run_compact(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


# -- history / replay (time travel over the HTTP API) ------------------------------------
DEFAULT_URL = "http://127.0.0.1:5000"


def _add_time_travel(sub: Any) -> None:
    url = os.environ.get("TRAJHUB_URL", DEFAULT_URL)
    history = sub.add_parser("history", help="list a room's events: who changed what, when")
    history.add_argument("room")
    history.add_argument("--url", default=url, help="the trajhub server (TRAJHUB_URL)")
    history.add_argument("--since", type=int, default=0, help="only events after this seq")
    history.add_argument("--limit", type=int, default=None, help="at most this many events")
    replay = sub.add_parser("replay", help="print a room's index as it was at a seq")
    replay.add_argument("room")
    replay.add_argument("--to", type=int, required=True, metavar="SEQ",
                        help="the seq (0: the empty room)")
    replay.add_argument("--url", default=url, help="the trajhub server (TRAJHUB_URL)")


def _frames_text(values: list[Any], limit: int = 10) -> str:
    text = ",".join(str(v) for v in values[:limit])
    return text + (f",... ({len(values)})" if len(values) > limit else "")


def format_history(events: list[dict[str, Any]]) -> list[str]:
    """One line per event: seq, time (UTC), author, kind, which frames."""
    lines = []
    for e in events:
        when = datetime.fromtimestamp(float(e["time"]), UTC).strftime("%Y-%m-%d %H:%M:%S")
        what = e["kind"] if e["kind"] == e.get("change") or not e.get("change") \
            else f"{e['kind']} ({e['change']})"
        extra = f" keys={','.join(e['keys'])}" if e.get("keys") else ""
        if e.get("reverts") is not None:
            extra += f" reverts={e['reverts']}"
        lines.append(f"{e['seq']:>6}  {when}  {e['author']:<12}  {what:<24}  "
                     f"indices={_frames_text(e['indices'])} "
                     f"ids={_frames_text(e['frame_ids'])}{extra}")
    return lines


def format_index(index: dict[str, Any]) -> list[str]:
    """A header, then one line per frame: index, frame id, version, hash prefix."""
    lines = [f"room {index['room']} at seq {index['seq']}: {index['n_frames']} frames",
             f"{'index':>6}  {'frame_id':>8}  {'version':>7}  hash"]
    for i, (fid, version, digest) in enumerate(zip(index["frame_ids"], index["versions"],
                                                   index["hashes"], strict=True)):
        lines.append(f"{i:>6}  {fid:>8}  {version:>7}  {digest[:16]}")
    return lines


def _run_time_travel(args: argparse.Namespace) -> int:
    from trajhub.client import Room, TrajhubError

    try:
        with Room(args.url, args.room) as vis:
            if args.command == "history":
                lines = format_history(vis.history(since=args.since, limit=args.limit))
            else:
                lines = format_index(vis.transport.get_index(vis.room, at_seq=args.to))
    except (TrajhubError, ValueError) as exc:
        print(f"trajhub {args.command}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


# -- compact (over the HTTP API: the server's control commits a relayout) ----------------
def _add_compact(sub: Any) -> None:
    p = sub.add_parser("compact", help=(
        "drop the frame data of a room's slots that no retained state or fork uses; "
        "frames of older states then answer 410 (their index and history stay)"))
    p.add_argument("room")
    p.add_argument("--url", default=os.environ.get("TRAJHUB_URL", DEFAULT_URL),
                   help="the trajhub server (TRAJHUB_URL)")
    p.add_argument("--keep-events", type=int, default=None, metavar="N", help=(
        "keep the frames of the states of the last N events (default: the server's "
        "TRAJHUB_STREAM_KEEP_EVENTS; never less than undo can reach)"))
    p.add_argument("--relayout", action="store_true", help=(
        "first rewrite the live frames to fresh slots in logical order (fast sequential "
        "reads; the old slots are dropped by a later pass, once no retained state uses "
        "them)"))
    p.add_argument("--user", default=os.environ.get("TRAJHUB_ADMIN_USER") or None, help=(
        "admin user for HTTP Basic auth (TRAJHUB_ADMIN_USER); the password comes from "
        "TRAJHUB_ADMIN_PASSWORD, or is asked for"))


def _admin_auth(user: str | None) -> tuple[str, str] | None:
    if not user:
        return None
    password = os.environ.get("TRAJHUB_ADMIN_PASSWORD")
    if password is None:
        import getpass

        password = getpass.getpass(f"trajhub admin password for {user}: ")
    return user, password


def _run_compact(args: argparse.Namespace) -> int:
    import json

    import httpx

    params: dict[str, Any] = {"relayout": "true" if args.relayout else "false"}
    if args.keep_events is not None:
        params["keep_events"] = args.keep_events
    url = f"{args.url.rstrip('/')}/api/v1/rooms/{args.room}/compact"
    try:
        response = httpx.post(url, params=params, auth=_admin_auth(args.user), timeout=None)
    except httpx.HTTPError as exc:
        print(f"trajhub compact: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"trajhub compact: {response.status_code} {_detail(response)}", file=sys.stderr)
        return 1
    print(json.dumps(response.json()))
    return 0


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return str(response.text)


# -- snapshot (on demand, straight to Redis and the store) ---------------------------------
def snapshot(room: str, redis_url: str | None = None,
             storage_url: str | None = None) -> dict[str, Any]:
    """Take a snapshot pass of ``room`` now (``trajhub.snapshotter.history``); URLs
    default to the settings (TRAJHUB_REDIS_URL, TRAJHUB_STORAGE_URL)."""
    from dataclasses import asdict

    from trajhub.shared.settings import Settings
    from trajhub.snapshotter.history import take_snapshot

    settings = Settings.from_env(redis_url=redis_url, storage_url=storage_url)

    async def run(redis: Any, history: Any) -> dict[str, Any]:
        return asdict(await take_snapshot(redis, history, room))

    return _with_history(settings, run)


def _with_history(settings: Any, work: Callable[[Any, Any], Awaitable[dict[str, Any]]]
                  ) -> dict[str, Any]:
    """Run ``work(redis, history store)`` against the configured Redis and store."""
    import asyncio

    from trajhub.shared.history_store import open_history_store
    from trajhub.shared.redis_util import async_client

    async def run() -> dict[str, Any]:
        redis = async_client(settings.redis_url)
        try:
            return await work(redis, open_history_store(settings.storage_url))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _run_snapshot(args: argparse.Namespace) -> int:
    import json

    try:
        from trajhub.snapshotter.history import RoomNotFound
    except ImportError as exc:
        print(f"trajhub snapshot needs the server parts: pip install 'trajhub[server]' "
              f"({exc})", file=sys.stderr)
        return 1
    try:
        result = snapshot(args.room, args.redis_url, args.storage_url)
    except (RoomNotFound, ValueError) as exc:
        print(f"trajhub snapshot: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0



# -- rebuild (storage projection from history, straight to Redis and the store) -----------
def _add_rebuild(sub: Any) -> None:
    p = sub.add_parser("rebuild", help=(
        "rebuild a room's Zarr group from its history (archived segments + event "
        "stream), checking every frame hash; replaces the group in place unless --into"))
    p.add_argument("room")
    p.add_argument("--redis-url", default=None, help="Redis (TRAJHUB_REDIS_URL)")
    p.add_argument("--storage-url", default=None, help="the Zarr store (TRAJHUB_STORAGE_URL)")
    p.add_argument("--into", default=None, metavar="DIR", help=(
        "write the new group to DIR/ROOM and leave the live store alone (swap by hand)"))


def rebuild(room: str, redis_url: str | None = None, storage_url: str | None = None,
            into: str | None = None) -> dict[str, Any]:
    """Run ``trajhub.storage.rebuild.rebuild``; returns its report's summary."""

    from trajhub.shared.settings import Settings
    from trajhub.storage.rebuild import rebuild as run_rebuild

    settings = Settings.from_env(redis_url=redis_url, storage_url=storage_url)

    async def run(redis: Any, history: Any) -> dict[str, Any]:
        report = await run_rebuild(redis, settings.storage_url, history, room, into)
        return report.summary()

    return _with_history(settings, run)


def _run_rebuild(args: argparse.Namespace) -> int:
    import json

    try:
        from trajhub.shared.history_reader import HistoryGone
        from trajhub.storage.rebuild import RebuildError
    except ImportError as exc:
        print(f"trajhub rebuild needs the server parts: pip install 'trajhub[server]' "
              f"({exc})", file=sys.stderr)
        return 1
    try:
        result = rebuild(args.room, args.redis_url, args.storage_url, args.into)
    except (RebuildError, HistoryGone, ValueError) as exc:
        print(f"trajhub rebuild: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    for m in result["missing"]:
        print(f"trajhub rebuild: no content for slot {m['slot']} (hash {m['hash']}, "
              f"frame indices {m['indices'] or 'none: only in the past'})", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
