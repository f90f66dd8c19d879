"""Helpers for the offline checks of the deployment files (compose.yaml, k8s/, the
Dockerfiles): the repository's paths, the Settings' environment names, YAML loading, the
workspace members and their console scripts, a kustomize renderer if one is installed."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from trajhub.shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SERVICES = ("gateway", "control", "storage", "snapshotter")


def setting_env_names() -> set[str]:
    return {f"TRAJHUB_{name.upper()}" for name in Settings.model_fields}


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def pyproject(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def workspace_members() -> dict[str, Path]:
    """Distribution name -> member directory (relative to the repo)."""
    members = pyproject(REPO / "pyproject.toml")["tool"]["uv"]["workspace"]["members"]
    return {pyproject(REPO / m / "pyproject.toml")["project"]["name"]: Path(m)
            for m in members}


def workspace_closure(dist: str) -> set[str]:
    """``dist`` and every workspace member it depends on, transitively."""
    members = workspace_members()
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        deps = pyproject(REPO / members[name] / "pyproject.toml")["project"]["dependencies"]
        for dep in deps:
            base = dep.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                base = base.split(sep)[0]
            if base in members:
                todo.append(base)
    return seen


def console_scripts() -> dict[str, str]:
    """Every console script of the workspace members -> its distribution."""
    scripts: dict[str, str] = {}
    for dist, member in workspace_members().items():
        data = pyproject(REPO / member / "pyproject.toml")["project"]
        for script in data.get("scripts", {}):
            scripts[script] = dist
    return scripts


# -- .dockerignore --------------------------------------------------------------------------
def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative, '/'-separated): a pattern
    matches the path or one of its parent directories ('!' re-includes, last one wins)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        alternatives = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatch.fnmatchcase(p, a) for p in prefixes for a in alternatives) or (
                pat.startswith("**/") and any(fnmatch.fnmatchcase(p.split("/")[-1], pat[3:])
                                              for p in prefixes)):
            ignored = not negate
    return ignored


# -- Dockerfiles ----------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


# -- kustomize --------------------------------------------------------------------------------
def kustomize_command() -> list[str] | None:
    """A kustomize renderer on PATH (``kustomize build`` or ``kubectl kustomize``)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(directory: Path, command: list[str]) -> list[dict[str, Any]]:
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]
