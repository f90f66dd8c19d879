"""docs/deploy.md documents every setting (one table row per TRAJHUB_* variable of
Settings) and names no TRAJHUB_* variable that does not exist."""

from __future__ import annotations

import re

from deploy_files import REPO, setting_env_names

DOC = REPO / "docs" / "deploy.md"


def table_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(TRAJHUB_[A-Z0-9_]+)` \|(.*)", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_setting_has_a_row() -> None:
    assert set(table_rows()) == setting_env_names()


def test_no_unknown_variable_is_mentioned() -> None:
    mentioned = set(re.findall(r"TRAJHUB_[A-Z0-9_]+", DOC.read_text()))
    assert mentioned <= setting_env_names()
