"""Hatch build hook: builds the browser viewer (``web/``, npm + Vite) into the package's
``static/`` dir when it is missing or older than the web sources, so that installing the
gateway (``uv sync`` installs it editable) is all a fresh clone needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

HERE = Path(__file__).resolve().parent
WEB = HERE.parent.parent / "web"
STATIC = HERE / "src" / "trajhub" / "gateway" / "static"
SOURCES = ("src", "index.html", "package.json", "package-lock.json", "vite.config.ts",
           "tsconfig.json")


def newest_mtime(paths: list[Path]) -> float:
    stamps = [p.stat().st_mtime for root in paths if root.exists()
              for p in ([root] if root.is_file() else root.rglob("*"))]
    return max(stamps, default=0.0)


def is_stale() -> bool:
    index = STATIC / "index.html"
    if not index.is_file():
        return True
    return newest_mtime([WEB / s for s in SOURCES]) > newest_mtime([STATIC])


def build_web() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "trajhub-gateway: the browser viewer must be built, but npm was not found. "
            "Install Node.js 20+ (with npm), or build it elsewhere: cd web && npm ci && "
            "npm run build")
    if not (WEB / "node_modules").is_dir() or newest_mtime(
            [WEB / "package-lock.json"]) > newest_mtime([WEB / "node_modules"]):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([npm, "run", "build"], cwd=WEB, check=True)


class WebBuildHook(BuildHookInterface):
    PLUGIN_NAME = "trajhub-web"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not (WEB / "package.json").is_file():
            # an sdist or a copy without web/: ship whatever static/ holds
            return
        if is_stale():
            self.app.display_info("trajhub-gateway: building the browser viewer (web/)")
            build_web()
