"""services/<svc>/Dockerfile, read without a Docker engine: every path it copies exists
and is in the build context (.dockerignore); uv installs exactly trajhub-<svc> from the
locked workspace with every member it needs; the command is that package's console
script; the image runs as a non-root user with a HEALTHCHECK; the gateway's web stage
uses a Node.js the viewer builds with and hands its output to the package."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from deploy_files import (
    REPO,
    SERVICES,
    console_scripts,
    dockerfile_instructions,
    dockerignore_patterns,
    dockerignored,
    workspace_closure,
    workspace_members,
)

Instructions = list[tuple[str, str]]


def instructions(svc: str) -> Instructions:
    return dockerfile_instructions(REPO / "services" / svc / "Dockerfile")


def stages(ins: Instructions) -> list[tuple[str, Instructions]]:
    """(stage name or '', its instructions), in order."""
    out: list[tuple[str, Instructions]] = []
    for word, args in ins:
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            out.append((name, []))
        elif out:
            out[-1][1].append((word, args))
    return out


def copies(stage: Instructions) -> list[tuple[list[str], str, str | None]]:
    """(sources, destination, --from stage) of each COPY."""
    out = []
    for word, args in stage:
        if word != "COPY":
            continue
        words = shlex.split(args)
        flags = {w.split("=", 1)[0]: w.split("=", 1)[-1] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1], flags.get("--from")))
    return out


def json_args(args: str) -> list[str]:
    match = re.fullmatch(r"\[(.*)\]", args.strip())
    assert match, f"use the exec (JSON) form: {args}"
    return [s.strip().strip('"') for s in match.group(1).split(",")]


def builder(svc: str) -> Instructions:
    return dict(stages(instructions(svc)))["builder"]


@pytest.mark.parametrize("svc", SERVICES)
def test_copied_paths_exist_and_are_in_the_context(svc: str) -> None:
    patterns = dockerignore_patterns()
    sources = [src for _, stage in stages(instructions(svc))
               for srcs, _, from_stage in copies(stage) if from_stage is None for src in srcs]
    assert "uv.lock" in sources and "shared/" in sources
    for source in sources:
        assert (REPO / source).exists(), f"{svc}: COPY {source}: no such path"
        assert not dockerignored(source, patterns), f"{svc}: {source} is ignored"


@pytest.mark.parametrize("svc", SERVICES)
def test_uv_installs_the_service_from_the_locked_workspace(svc: str) -> None:
    stage = builder(svc)
    syncs = [(i, args) for i, (word, args) in enumerate(stage)
             if word == "RUN" and "uv sync" in args]
    assert syncs
    for _, args in syncs:
        assert f"--package trajhub-{svc}" in args and "--locked" in args
        assert "--no-dev" in args
    copied_before_sync = {src for sources, _, frm in copies(stage[:syncs[0][0]]) if frm is None
                          for src in sources}
    for member in workspace_members().values():
        assert str(member / "pyproject.toml") in copied_before_sync, member
    assert {"uv.lock", "pyproject.toml"} <= copied_before_sync
    copied_dirs = {Path(src.rstrip("/")) for sources, _, frm in copies(stage) if frm is None
                   for src in sources}
    members = workspace_members()
    for dist in workspace_closure(f"trajhub-{svc}"):
        assert members[dist] in copied_dirs, f"{svc} needs {members[dist]}/"
    assert "--no-editable" in syncs[-1][1]  # the runtime stage gets the venv only


@pytest.mark.parametrize("svc", SERVICES)
def test_runtime_stage(svc: str) -> None:
    name, stage = stages(instructions(svc))[-1]
    words = [w for w, _ in stage]
    assert name == ""
    (cmd,) = [json_args(a) for w, a in stage if w == "CMD"]
    assert console_scripts().get(cmd[0]) == f"trajhub-{svc}", cmd
    users = [a for w, a in stage if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("CMD")
    (health,) = [a for w, a in stage if w == "HEALTHCHECK"]
    check = json_args(health.split(" CMD ", 1)[1])
    assert check[:2] == ["python", "-m"]
    assert importlib.util.find_spec(check[2]) is not None
    venv = [frm for _, _, frm in copies(stage)]
    assert venv == ["builder"]
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "PATH=/app/.venv/bin:" in env
    if svc in ("gateway", "control"):
        assert check[3:] == ["--http"]
        (port,) = re.findall(r"TRAJHUB_PORT=(\d+)", env)
        assert [a for w, a in stage if w == "EXPOSE"] == [port]
        assert "TRAJHUB_HOST=0.0.0.0" in env
    else:
        assert check[3:] == [] and "EXPOSE" not in words


def node_version(default_image: str) -> tuple[int, int]:
    tag = default_image.split(":")[1]
    numbers = [int(n) for n in re.findall(r"\d+", tag.split("-")[0])]
    return numbers[0], numbers[1] if len(numbers) > 1 else 99


def test_gateway_builds_the_viewer_in_a_node_stage() -> None:
    ins = instructions("gateway")
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert node_version(args["NODE_IMAGE"]) >= (20, 19)  # what vite needs
    web = dict(stages(ins))["web"]
    assert any(w == "RUN" and "npm ci" in a for w, a in web)
    vite = (REPO / "web" / "vite.config.ts").read_text()
    out_dir = re.search(r'new URL\("\.\./([^"]+)"', vite)
    assert out_dir is not None
    (static,) = [(sources, dest) for sources, dest, frm in copies(builder("gateway"))
                 if frm == "web"]
    assert static[0] == [f"/src/{out_dir.group(1)}/"]
    assert static[1].rstrip("/") == out_dir.group(1)
    # web/ stays out of the builder, so the package's build hook ships static/ as is
    assert not any(src.startswith("web") for sources, _, frm in copies(builder("gateway"))
                   if frm is None for src in sources)


def test_node_version_parsing() -> None:
    assert node_version("node:22-bookworm-slim") == (22, 99)
    assert node_version("node:20.18-slim") < (20, 19) <= node_version("node:20.19.1")


def test_dockerignore() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", "web/node_modules/vite/x.js", ".git/HEAD",
                 "services/gateway/src/trajhub/gateway/static/index.html",
                 "shared/src/trajhub/shared/__pycache__/a.pyc"):
        assert dockerignored(path, patterns), path
    for path in ("uv.lock", "shared/src/trajhub/shared/settings.py", "web/package.json",
                 "services/gateway/hatch_build.py"):
        assert not dockerignored(path, patterns), path
