"""The ``trajhub`` command line."""

from __future__ import annotations

import argparse
import os
import sys


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from trajhub.serve import serve

        serve(args.host, args.port, args.data_dir, args.redis_url)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
