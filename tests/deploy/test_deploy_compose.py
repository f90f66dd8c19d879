"""compose.yaml: parses; runs Redis with AOF on a named volume and the four services;
MinIO (S3) sits behind a profile; `--scale storage=3` is valid (no container_name, no
host ports on scaled services); every TRAJHUB_* variable it sets or reads is a setting;
every build names a Dockerfile that exists; references resolve."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_files import REPO, SERVICES, load_yaml_docs, setting_env_names

SCALED = ("storage", "control", "snapshotter")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(REPO / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", *SERVICES} <= set(services)
    for name in SERVICES:
        assert "profiles" not in services[name], f"{name} must start by default"
        assert services[name]["build"]["context"] == "."
        dockerfile = REPO / services[name]["build"]["dockerfile"]
        assert dockerfile == REPO / "services" / name / "Dockerfile"
        assert dockerfile.is_file()


def test_redis_persists_with_aof_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    mounts = dict(v.split(":", 1)[::-1] for v in redis["volumes"])
    assert data_dir in mounts, "the AOF directory is not on a volume"
    assert mounts[data_dir] in compose["volumes"], "not a named volume"
    assert "healthcheck" in redis


def test_object_store_is_behind_a_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiled = {name for name, svc in services.items() if "profiles" in svc}
    assert "minio" in profiled
    assert all(services[name]["profiles"] == ["s3"] for name in profiled)
    # what depends on a profiled service must not require it without the profile
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, spec in (deps.items() if isinstance(deps, dict) else []):
            if dep in profiled and name not in profiled:
                assert spec.get("required") is False, (name, dep)


def test_scaling_is_valid(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "container_name" not in svc, name
        if name in SCALED:
            assert "ports" not in svc, f"{name}: a fixed host port cannot be scaled"


def test_trajhub_variables_are_settings(compose: dict[str, Any]) -> None:
    known = setting_env_names()
    for name, svc in compose["services"].items():
        for var, value in environment(svc).items():
            if var.startswith("TRAJHUB_"):
                assert var in known, (name, var)
            for used in INTERPOLATION.findall(value):
                if used.startswith("TRAJHUB_"):
                    assert used in known, (name, used)


def test_services_share_the_store_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_urls = {environment(services[n])["TRAJHUB_REDIS_URL"] for n in SERVICES}
    assert redis_urls == {"redis://redis:6379/0"}
    zarr_mounts = {n: [v for v in services[n].get("volumes", []) if v.endswith(":/data/zarr")]
                   for n in ("gateway", "storage", "snapshotter")}
    assert all(len(m) == 1 for m in zarr_mounts.values()), zarr_mounts
    assert {m[0].split(":")[0] for m in zarr_mounts.values()} <= set(compose["volumes"])
    default_store = environment(services["storage"])["TRAJHUB_STORAGE_URL"]
    assert default_store.endswith(":-/data/zarr}")


def test_gateway_reaches_control(compose: dict[str, Any]) -> None:
    services = compose["services"]
    control_port = environment(services["control"])["TRAJHUB_PORT"]
    assert environment(services["gateway"])["TRAJHUB_CONTROL_URL"] == (
        f"http://control:{control_port}")


def test_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named = set(compose["volumes"])
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert set(deps) <= set(services), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, (name, source)


def test_s3_settings_follow_the_store_contract(compose: dict[str, Any]) -> None:
    """s3fs reads the standard AWS variables; MinIO's root credentials are the same."""
    services = compose["services"]
    env = environment(services["storage"])
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert var in env
    minio = environment(services["minio"])
    assert minio["MINIO_ROOT_USER"] == env["AWS_ACCESS_KEY_ID"]
    assert minio["MINIO_ROOT_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ENDPOINT_URL"].endswith(":-http://minio:9000}")
