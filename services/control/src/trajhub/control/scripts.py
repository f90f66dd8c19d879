"""The Lua scripts, assembled from the files in ``lua/``.

Every script gets ``lib_read.lua`` prepended, and every script that writes ``lib.lua``
as well (the read script, run on every frame read, defines only what it uses: Redis
runs a script's whole body, function definitions included, at every call); the commit
scripts also get ``commit.lua``.
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


def _with_lib(*names: str) -> str:
    return "\n".join([_read("lib_read"), _read("lib"), *map(_read, names)])


@cache
def commit_script(op: CommitOp) -> str:
    return _with_lib("commit", op)


@cache
def read_index_script() -> str:
    return "\n".join([_read("lib_read"), _read("read_index")])


@cache
def lock_script() -> str:
    return _with_lib("lock")


@cache
def presenter_script() -> str:
    return _with_lib("presenter")


@cache
def fork_script() -> str:
    return _with_lib("commit", "fork")
