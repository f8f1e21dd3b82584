"""The Kubernetes manifests in ``deploy/kubernetes`` are valid and consistent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# A current Kubernetes release that kubernetes-validate ships schemas for.
KUBERNETES_VERSION = "1.35.0"


def _manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all_documents() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in _documents(path)]


def _named(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_every_manifest_validates(path: Path) -> None:
    docs = _documents(path)
    assert docs
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently dropped.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    """The validator is really checking (a test that cannot fail is a defect)."""
    service = _named("Deployment", "skydm-services")
    broken = yaml.safe_load(yaml.safe_dump(service))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(service))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifests())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_and_the_result_validates() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(docs) == len(_all_documents())
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "skydm"


def test_services_run_with_auth_and_the_deployment_has_what_it_names() -> None:
    deployment = _named("Deployment", "skydm-services")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[0] == "serve"
    assert args[args.index("--auth") + 1] in ("tokens", "oidc")
    assert args[args.index("--host") + 1] == "0.0.0.0"
    # The container's command line is one the real `skydm serve` parser accepts.
    from skydm.cli.main import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and parsed.port == 8000
    assert pod["containers"][0]["ports"][0]["containerPort"] == parsed.port
    # The probes reach a path the auth gate leaves open.
    from skydm.services.auth.gate import PUBLIC_PATHS

    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] in PUBLIC_PATHS
    config = _named("ConfigMap", "skydm-config")["data"]
    secret = _named("Secret", "skydm-secrets")["stringData"]
    assert "SKYDM_KAFKA_BOOTSTRAP" in config
    assert secret["SKYDM_REGISTRY_URL"].startswith("postgresql+psycopg://")
    assert "skydm-postgres" in secret["SKYDM_REGISTRY_URL"]
    _named("StatefulSet", "skydm-postgres")
    hub_config = _named("ConfigMap", "skydm-hub-config")["data"]["jupyterhub_config.py"]
    assert "kubespawner.KubeSpawner" in hub_config
    compile(hub_config, "jupyterhub_config.py", "exec")
    assert (
        _named("Deployment", "skydm-hub")["spec"]["template"]["spec"]["serviceAccountName"]
        == _named("ServiceAccount", "skydm-hub")["metadata"]["name"]
    )


def test_every_reference_resolves() -> None:
    """Services select pods that exist, and the Ingress, volumes and env name real objects."""
    docs = _all_documents()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for service in services.values():
        selector = service["spec"]["selector"]
        matching = [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]
        assert matching, service["metadata"]["name"]
        ports = {
            p["name"] for t in matching for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    for template in pods.values():
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in names
        for volume in template["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
    ingress = _named("Ingress", "skydm")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = services[backend["name"]]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_hub_config_loads_with_skydm_login_and_kubespawner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster hub's config runs, and names skydm's authenticator with its settings."""
    pytest.importorskip("jupyterhub", reason="pip install skydm[platform]")
    from traitlets.config import Config

    from skydm.platform.hub import SkydmAuthenticator

    text = _named("ConfigMap", "skydm-hub-config")["data"]["jupyterhub_config.py"]
    monkeypatch.setenv("POD_NAMESPACE", "skydm")
    monkeypatch.setenv("SKYDM_NOTEBOOK_IMAGE", "skydm:latest")
    config = Config()
    exec(compile(text, "jupyterhub_config.py", "exec"), {"get_config": lambda: config})
    assert config.JupyterHub.authenticator_class == "skydm.platform.hub.SkydmAuthenticator"
    assert config.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    authenticator = SkydmAuthenticator(config=config)
    # The hub reaches the services' Service in-cluster; browsers log in at the Ingress's /login.
    services = _named("Service", "skydm-services")
    assert authenticator.services_url == f"http://{services['metadata']['name']}.skydm.svc"
    assert authenticator.browser_login_url == "/login"
    assert set(authenticator.notebook_scopes) <= {"read:tap", "read:image"}
    # The hub's pod gets the auth-state key from the Secret it reads.
    hub = _named("Deployment", "skydm-hub")["spec"]["template"]["spec"]["containers"][0]
    secret = _named("Secret", "skydm-secrets")
    assert {"secretRef": {"name": "skydm-secrets"}} in hub["envFrom"]
    assert "JUPYTERHUB_CRYPT_KEY" in secret["stringData"]
    # The Ingress sends the login to the services and /hub, /user to the hub.
    paths = {
        p["path"]: p["backend"]["service"]["name"]
        for r in _named("Ingress", "skydm")["spec"]["rules"]
        for p in r["http"]["paths"]
    }
    assert paths["/hub"] == paths["/user"] == "skydm-hub" and paths["/"] == "skydm-services"
