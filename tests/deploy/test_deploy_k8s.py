"""k8s/: every YAML parses; every manifest validates against the Kubernetes JSON schemas
(kubernetes-validate, which ships them: no network); every kustomization references
files that exist and every file is used; the manifests hang together (probes on real
endpoints, selectors that select, references that resolve, settings that exist); and
the kustomize output of the base and the example overlay, when a renderer
(``kustomize`` or ``kubectl``) is on PATH, passes the same checks."""

from __future__ import annotations

import ast
import base64
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_files import (
    K8S,
    REPO,
    SERVICES,
    kustomize_command,
    load_yaml_docs,
    render,
    setting_env_names,
)

K8S_VERSION = "1.32"
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
ALL_YAML = sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])
HTTP_SERVICES = {"gateway": 5000, "control": 5001}


def kustomization(directory: Path) -> dict[str, Any]:
    docs = load_yaml_docs(directory / "kustomization.yaml")
    assert len(docs) == 1
    data: dict[str, Any] = docs[0]
    return data


def referenced_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(field, path) of every file or directory a kustomization names."""
    k = kustomization(directory)
    for entry in k.get("resources", []):
        yield "resources", directory / entry
    for patch in k.get("patches", []):
        if "path" in patch:
            yield "patches", directory / patch["path"]
    for entry in k.get("patchesStrategicMerge", []):
        yield "patchesStrategicMerge", directory / entry
    for gen in [*k.get("configMapGenerator", []), *k.get("secretGenerator", [])]:
        for env in gen.get("envs", []):
            yield "envs", directory / env
        for item in gen.get("files", []):
            yield "files", directory / item.split("=")[-1]


def base_manifests() -> list[dict[str, Any]]:
    """The base's resources as files (what a renderer would output, less its labels)."""
    docs: list[dict[str, Any]] = []
    for field, path in referenced_files(K8S / "base"):
        assert field == "resources"
        docs.extend(load_yaml_docs(path))
    return docs


def validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_labels(docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [d["spec"]["template"]["metadata"]["labels"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@functools.cache
def gateway_and_control_paths() -> dict[str, frozenset[str]]:
    """The GET paths the gateway (``@router.get(...)``) and control (``Route(..., methods=
    ["GET"])``) serve, read from their source (importing the gateway takes seconds)."""
    sources = {"gateway": "services/gateway/src/trajhub/gateway",
               "control": "services/control/src/trajhub/control"}
    return {name: frozenset(path for file in (REPO / src).glob("*.py")
                            for path in get_routes(ast.parse(file.read_text())))
            for name, src in sources.items()}


def get_routes(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args
                and isinstance(node.args[0], ast.Constant)):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "get"
                and isinstance(func.value, ast.Name) and func.value.id in ("router", "app")):
            yield str(node.args[0].value)
        elif isinstance(func, ast.Name) and func.id == "Route":
            methods = [k.value for k in node.keywords if k.arg == "methods"]
            if methods and "GET" in ast.literal_eval(methods[0]):
                yield str(node.args[0].value)


# -- the files --------------------------------------------------------------------------------
def test_there_is_a_base_and_an_example_overlay() -> None:
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert (K8S / "overlays" / "example" / "kustomization.yaml").is_file()


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("directory", [k.parent for k in KUSTOMIZATIONS],
                         ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_references_exist(directory: Path) -> None:
    for field, path in referenced_files(directory):
        assert path.exists(), f"{directory}/kustomization.yaml {field}: {path} is missing"
        if path.is_dir():
            assert (path / "kustomization.yaml").is_file(), path


def test_every_file_under_k8s_is_used() -> None:
    used = {path.resolve() for k in KUSTOMIZATIONS for _, path in referenced_files(k.parent)
            if path.is_file()}
    used |= {k.resolve() for k in KUSTOMIZATIONS}
    orphans = [p for p in K8S.rglob("*") if p.is_file() and p.resolve() not in used]
    assert orphans == []


def test_overlay_patches_name_base_objects() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in base_manifests()}
    overlay = K8S / "overlays" / "example"
    for field, path in referenced_files(overlay):
        if field == "patches":
            for doc in load_yaml_docs(path):
                assert (doc["kind"], doc["metadata"]["name"]) in base, (path, doc["kind"])
    for patch in kustomization(overlay).get("patches", []):
        if "target" in patch:
            assert (patch["target"]["kind"], patch["target"]["name"]) in base


def resource_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every complete manifest: the files kustomizations list as resources."""
    out = []
    for k in KUSTOMIZATIONS:
        for field, path in referenced_files(k.parent):
            if field == "resources" and path.is_file():
                out.extend((f"{path.relative_to(K8S)}#{i}", d)
                           for i, d in enumerate(load_yaml_docs(path)))
    return out


@pytest.mark.parametrize("doc", [d for _, d in resource_documents()],
                         ids=[n for n, _ in resource_documents()])
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    validate(doc)


def test_the_validator_refuses_a_broken_manifest() -> None:
    """The schema check is real: a misspelt field fails it (strict mode)."""
    deployment = next(d for d in base_manifests() if d["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# -- consistency ---------------------------------------------------------------------------------
def check_consistency(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES)
    configmaps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    routes = gateway_and_control_paths()
    known = setting_env_names()
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert selects(dep["spec"]["selector"]["matchLabels"],
                       dep["spec"]["template"]["metadata"]["labels"])
        (container,) = pod["containers"]
        assert container["image"].split("/")[-1].split(":")[0].endswith(name)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        for probe_kind in ("readinessProbe", "livenessProbe"):
            probe = container[probe_kind]
            if name in HTTP_SERVICES:
                assert probe["httpGet"]["path"] in routes[name], (name, probe)
                port = probe["httpGet"]["port"]
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert ports[port] == HTTP_SERVICES[name]
            else:
                command = probe["exec"]["command"]
                assert command[:2] == ["python", "-m"]
                assert importlib.util.find_spec(command[2]) is not None, command
        env = {e["name"]: e for e in container.get("env", [])}
        if name in HTTP_SERVICES:
            assert env["TRAJHUB_PORT"]["value"] == str(HTTP_SERVICES[name])
        for source in container["envFrom"]:
            ref = source.get("configMapRef") or source["secretRef"]
            pool = configmaps if "configMapRef" in source else secrets
            assert ref["name"] in pool, (name, ref)
        for var in env:
            if var.startswith("TRAJHUB_"):
                assert var in known, (name, var)
    for obj in [*configmaps.values(), *secrets.values()]:
        for var in [*obj.get("data", {}), *obj.get("stringData", {})]:
            if var.startswith("TRAJHUB_"):
                assert var in known, (obj["metadata"]["name"], var)
    check_services_and_ingress(docs)
    check_autoscaling(docs)
    check_redis(docs, configmaps)


def check_services_and_ingress(docs: list[dict[str, Any]]) -> None:
    services = by_kind(docs, "Service")
    labels = pod_labels(docs)
    for name, svc in services.items():
        assert any(selects(svc["spec"]["selector"], lab) for lab in labels), name
    assert {"gateway", "control", "redis"} <= set(services)
    (ingress,) = by_kind(docs, "Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway"
            port_names = {p["name"] for p in services["gateway"]["spec"]["ports"]}
            assert backend["port"]["name"] in port_names


def check_autoscaling(docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert targets == {"gateway", "storage"}
    assert targets <= set(deployments)
    for hpa in hpas.values():
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdbs = by_kind(docs, "PodDisruptionBudget")
    covered = {name for name, dep in deployments.items() for pdb in pdbs.values()
               if selects(pdb["spec"]["selector"]["matchLabels"],
                          dep["spec"]["template"]["metadata"]["labels"])}
    assert {"gateway", "control", "storage"} <= covered


def check_redis(docs: list[dict[str, Any]], configmaps: dict[str, dict[str, Any]]) -> None:
    redis = by_kind(docs, "StatefulSet")["redis"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[data_dir] in claims, "the AOF directory is not on the claim"
    url = configmaps["trajhub-config"]["data"]["TRAJHUB_REDIS_URL"]
    assert url.startswith(f"redis://{redis['spec']['serviceName']}:")


def test_base_files_hang_together() -> None:
    check_consistency(base_manifests())


def test_consistency_check_catches_a_probe_on_a_missing_endpoint() -> None:
    docs = base_manifests()
    gateway = by_kind(docs, "Deployment")["gateway"]
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "path"] = "/ready"
    with pytest.raises(AssertionError):
        check_consistency(docs)


# -- rendered (when a kustomize renderer is installed) ----------------------------------------
@pytest.fixture(scope="module")
def renderer() -> list[str]:
    command = kustomize_command()
    if command is None:
        pytest.skip("no kustomize renderer (kustomize or kubectl) on PATH; the file "
                    "reference checks above still ran")
    return command


@pytest.mark.parametrize("overlay", ["base", "overlays/example"])
def test_rendered_output_validates_and_hangs_together(renderer: list[str],
                                                      overlay: str) -> None:
    docs = render(K8S / overlay, renderer)
    for doc in docs:
        validate(doc)
    check_consistency(docs)


def test_rendered_example_overlay(renderer: list[str]) -> None:
    docs = render(K8S / "overlays" / "example", renderer)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "trajhub"}
    for dep in by_kind(docs, "Deployment").values():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("registry.example.org/trajhub/"), image
    (secret,) = by_kind(docs, "Secret").values()
    assert "stringData" not in secret  # would override the generated data on apply
    env_file = K8S / "overlays" / "example" / "secrets.example.env"
    expected = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                    if line and not line.startswith("#"))
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == expected
    ingress = by_kind(docs, "Ingress")["trajhub"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["trajhub.example.org"]
    assert by_kind(docs, "HorizontalPodAutoscaler")["storage"]["spec"]["maxReplicas"] == 4


def test_repo_root_is_right() -> None:
    assert (REPO / "uv.lock").is_file()
