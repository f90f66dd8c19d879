"""The Lua scripts, assembled from the files in ``lua/``.

Every script gets ``lib.lua`` prepended; the commit scripts also ``commit.lua``.
Scripts run with EVALSHA (redis-py reloads them on NOSCRIPT); no FUNCTION, so they
run on Redis 6.2 as well as 7.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

CommitOp = Literal["insert", "replace", "delete", "revert", "create"]


def _read(name: str) -> str:
    return files("trajhub.control").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def commit_script(op: CommitOp) -> str:
    return "\n".join([_read("lib"), _read("commit"), _read(op)])


@cache
def read_index_script() -> str:
    return "\n".join([_read("lib"), _read("read_index")])


@cache
def lock_script() -> str:
    return "\n".join([_read("lib"), _read("lock")])


@cache
def presenter_script() -> str:
    return "\n".join([_read("lib"), _read("presenter")])


@cache
def fork_script() -> str:
    return "\n".join([_read("lib"), _read("commit"), _read("fork")])
