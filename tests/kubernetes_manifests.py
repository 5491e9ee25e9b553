"""What the Kubernetes tests share: the manifests (deploy/kubernetes) rendered with kustomize,
lookups over the rendered objects, and the slice of GJSON that KEDA's valueLocation uses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
CRD_DIR = Path(__file__).resolve().parent / "data" / "crds"
# The oldest Kubernetes the manifests are meant for (the preStop `sleep` action is 1.30's); the
# newest kubernetes-validate knows is checked too.
K8S_VERSIONS = ["1.30"]
API_IMAGE, WORKER_IMAGE = "hpo-service-api", "hpo-service-worker"
THIRD_PARTY_IMAGES = {"postgres"}
QUEUE_PATH = "/api/v1/queue"
SECRETISH = re.compile(r"TOKEN|PASSWORD|SECRET|DATABASE_URL|CREDENTIAL", re.I)



# --------------------------------------------------------------------------- kustomize


def kustomize_command() -> list[str] | None:
    """`kustomize build`, or kubectl's built-in one (4.x or later: components, labels)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        try:
            out = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
            version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
        match = re.match(r"v(\d+)", version)
        if match and int(match.group(1)) >= 4:
            return ["kubectl", "kustomize"]
    return None


KUSTOMIZE = kustomize_command()
pytestmark = pytest.mark.skipif(
    KUSTOMIZE is None,
    reason="no kustomize (4.x or later): install kubectl (its `kubectl kustomize`) or kustomize to render deploy/kubernetes",
)


def render(directory: Path) -> list[dict[str, Any]]:
    assert KUSTOMIZE is not None
    done = subprocess.run([*KUSTOMIZE, str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kustomize build {directory}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def objects(renders: dict[str, list[dict[str, Any]]], kind: str, *overlays: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, o) for name, docs in renders.items() if not overlays or name in overlays for o in docs if o["kind"] == kind]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in docs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(owning object, pod template) for every kind here that runs pods."""
    for o in docs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o, o["spec"]["template"]
        elif o["kind"] == "ScaledJob":
            yield o, o["spec"]["jobTargetRef"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def image_name(image: str) -> str:
    """registry.example.org/hpo/hpo-service-api:0.1.0 -> hpo-service-api."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment", "hpo-api")
    assert deployment is not None
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "api")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True



def evaluate_gjson(document: Any, path: str) -> Any:
    """The part of GJSON a metrics-api valueLocation needs: dotted keys, array indexes and `#`
    (a length). Anything else (wildcards, queries, modifiers) is refused rather than guessed."""
    value = document
    for part in re.split(r"(?<!\\)\.", path):
        part = part.replace("\\.", ".")
        if re.search(r"[*?|@!#(]", part) and part != "#":
            raise ValueError(f"GJSON feature not understood here: {part!r}")
        if part == "#":
            value = len(value)
        elif isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def triggers(renders) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = []
    for kind in ("ScaledObject", "ScaledJob"):
        for name, o in objects(renders, kind):
            for trigger in o["spec"]["triggers"]:
                found.append((name, o, trigger))
    return found


