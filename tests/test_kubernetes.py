"""The Kubernetes manifests (deploy/kubernetes): every overlay rendered with kustomize and every
object validated offline, against the Kubernetes OpenAPI schemas (kubernetes-validate) and, for
KEDA's and the Prometheus Operator's kinds, against their CRDs' schemas (tests/data/crds).

Then what the schemas cannot tell: every `hpo` command and flag the containers run exists,
secrets are referenced and never inlined, workers ask for a GPU, the network policies let only
the API tier reach PostgreSQL and the workers only the API, and KEDA scales each pool on the
queue with the worker token. tests/test_kubernetes_live.py checks the rest against a real
server. No cluster is needed; kustomize is (the tests skip without it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.conftest import BIN
from tests.test_compose import subcommand_words
from tests.kubernetes_manifests import API_IMAGE, CRD_DIR, K8S, K8S_VERSIONS, OVERLAYS, QUEUE_PATH, ROOT, SECRETISH, THIRD_PARTY_IMAGES, WORKER_IMAGE, api_container, containers, env_of, find, image_name, objects, pod_templates, selects, triggers
from tests.kubernetes_manifests import renders  # noqa: F401  (a module fixture both files use)


def test_every_overlay_renders(renders):
    assert {"production", "try-out", "spot"} <= set(OVERLAYS)
    assert [o for o in OVERLAYS if o.startswith("gpu-")], "no GPU pool overlay"
    for name, docs in renders.items():
        assert docs, f"{name} renders nothing"
        for o in docs:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == "hpo", f"{name}: {o['kind']}/{o['metadata']['name']} outside namespace hpo"


# --------------------------------------------------------------------------- schemas


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, from the vendored CRD schemas."""
    found = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["versions"]:
            found[(f"{crd['group']}/{version['name']}", crd["kind"])] = structural_to_json_schema(version["openAPIV3Schema"])
    return found


def structural_to_json_schema(node: Any) -> Any:
    """A CRD's structural schema as JSON Schema: the API server prunes (or, with strict field
    validation, refuses) unknown fields, which JSON Schema allows unless told otherwise."""
    if isinstance(node, list):
        return [structural_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string") and "type" not in node:
        out["anyOf"] = out.get("anyOf") or [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    closed = "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and closed:
        out["additionalProperties"] = False
    return out


CRDS = crd_schemas()


def validate_custom(o: dict[str, Any]) -> None:
    schema = CRDS.get((o["apiVersion"], o["kind"]))
    assert schema is not None, f"no schema for {o['apiVersion']} {o['kind']}: vendor its CRD under tests/data/crds"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(o), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    if o["kind"] == "ScaledJob":
        # The CRD's copy of a Job's spec was trimmed from the vendored schema: Kubernetes' own instead.
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": o["metadata"]["name"]}, "spec": o["spec"]["jobTargetRef"]}
        validate_builtin(job)


def validate_builtin(o: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in [*K8S_VERSIONS, kubernetes_validate.latest_version()]:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"Kubernetes {exc.version}: {path}: {exc.message}") from None


def test_every_object_is_valid_against_its_schema(renders):
    import kubernetes_validate

    seen = set()
    for name, docs in renders.items():
        for o in docs:
            where = f"{name}: {o['kind']}/{o['metadata']['name']}"
            try:
                if (o["apiVersion"], o["kind"]) in CRDS:
                    validate_custom(o)
                else:
                    validate_builtin(o)
            except kubernetes_validate.SchemaNotFoundError as exc:
                raise AssertionError(f"{where}: {exc.message}") from None
            except AssertionError as exc:
                raise AssertionError(f"{where}: {exc}") from None
            seen.add(o["kind"])
    assert {"ScaledObject", "ScaledJob", "TriggerAuthentication", "ServiceMonitor"} <= seen


def test_the_crd_schemas_refuse_unknown_fields():
    """The check above would pass anything if the vendored schemas were open."""
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
          "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "metrics-api", "metadata": {}}], "minReplicas": 0}}
    with pytest.raises(AssertionError, match="minReplicas"):
        validate_custom(so)


# --------------------------------------------------------------------------- commands


def expand(word: str, env: dict[str, dict[str, Any]]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; a name that is not in env stays literal."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "VALUE" if m.group(1) in env else m.group(0), word)


def hpo_invocations(argv: list[str]) -> Iterator[list[str]]:
    """Every `hpo ...` in argv: directly, after a wrapper's `--`, or inside `sh -c '...'`."""
    for i, word in enumerate(argv):
        if word in ("-c",) and i > 0 and Path(argv[i - 1]).name in ("sh", "bash") and i + 1 < len(argv):
            yield from hpo_invocations(shlex.split(argv[i + 1]))
        elif Path(word).name == "hpo":
            yield argv[i:]


def run_help(words: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run([str(BIN / "hpo"), *words, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, f"hpo {' '.join(words)} --help exited {done.returncode}: {done.stderr}"
    return done.stdout


def all_invocations(renders) -> list[tuple[str, list[str], dict[str, dict[str, Any]]]]:
    found = []
    for name, docs in renders.items():
        for owner, pod in pod_templates(docs):
            for c in containers(pod):
                argv = [*c.get("command", []), *c.get("args", [])]
                for invocation in hpo_invocations(argv):
                    found.append((f"{name}: {owner['kind']}/{owner['metadata']['name']}/{c['name']}", invocation, env_of(c)))
    return found


def test_every_hpo_command_and_flag_exists_in_the_package(renders):
    invocations = all_invocations(renders)
    commands = {tuple(subcommand_words(argv)) for _, argv, _ in invocations}
    assert {("serve",), ("migrate",), ("worker",), ("token", "create")} <= commands, commands
    helps = {words: run_help(words) for words in commands}
    for where, argv, env in invocations:
        words = subcommand_words(argv)
        for word in argv[1 + len(words):]:
            assert "$(" not in expand(word, env), f"{where}: {word} names no variable of the container"
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[tuple(words)]), (
                    f"{where}: `hpo {' '.join(words)}` has no option {flag}"
                )


def test_every_container_runs_an_image_of_this_project_or_a_known_one(renders):
    for name, docs in renders.items():
        for owner, pod in pod_templates(docs):
            for c in containers(pod):
                image = image_name(c["image"])
                assert image in {API_IMAGE, WORKER_IMAGE, *THIRD_PARTY_IMAGES}, f"{name}: {c['image']}"
                argv = [*c.get("command", []), *c.get("args", [])]
                if argv[:2] == ["hpo", "worker"]:
                    assert image == WORKER_IMAGE, f"{name}: the worker needs the worker image (torch)"
                elif image == WORKER_IMAGE:
                    raise AssertionError(f"{name}: {c['name']} runs the worker image for {argv}")
                if image in (API_IMAGE, WORKER_IMAGE):
                    assert argv, f"{name}: {c['name']} relies on the image's CMD; say what it runs"


def test_overlays_set_images_that_are_used(renders):
    """kustomize ignores an `images:` entry whose name matches nothing; a typo would ship :latest."""
    for name in OVERLAYS:
        config = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
        used = {c["image"] for _, pod in pod_templates(renders[name]) for c in containers(pod)}
        for entry in config.get("images", []):
            expected = entry.get("newName", entry["name"]) + (f":{entry['newTag']}" if "newTag" in entry else "")
            assert expected in used, f"{name}: images entry {entry['name']} changes no container ({used})"


def test_the_bootstrap_script_a_container_runs_is_the_mounted_one(renders):
    docs = renders["production"]
    job = find(docs, "Job", "hpo-bootstrap")
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "bootstrap")
    script = Path(container["command"][1])
    mount = next(m for m in container["volumeMounts"] if script.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    assert configmap is not None and script.name in configmap["data"]
    assert configmap["data"][script.name] == (K8S / "base" / "bootstrap" / "bootstrap.py").read_text()


# --------------------------------------------------------------------------- secrets


def secret_refs(o: Any) -> Iterator[tuple[str, str | None]]:
    """(secret name, key) for every place an object names a Secret."""
    if isinstance(o, dict):
        if "secretKeyRef" in o:
            yield o["secretKeyRef"]["name"], o["secretKeyRef"]["key"]
        if "secretRef" in o and isinstance(o["secretRef"], dict):
            yield o["secretRef"]["name"], None
        if "secret" in o and isinstance(o["secret"], dict) and "secretName" in o["secret"]:
            yield o["secret"]["secretName"], None
        if "secretTargetRef" in o:
            for ref in o["secretTargetRef"]:
                yield ref["name"], ref["key"]
        if "credentials" in o and isinstance(o["credentials"], dict):
            yield o["credentials"]["name"], o["credentials"]["key"]
        if "secretName" in o and isinstance(o["secretName"], str):
            yield o["secretName"], None
        for v in o.values():
            yield from secret_refs(v)
    elif isinstance(o, list):
        for v in o:
            yield from secret_refs(v)


def test_secrets_are_referenced_never_inlined(renders):
    readme = (K8S / "README.md").read_text()
    named = set()
    for name, docs in renders.items():
        text = yaml.safe_dump_all(docs)
        assert not re.search(r"hpo_[0-9a-f]{8}_\w", text), f"{name}: a token is written into the manifests"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{name}: a URL with a password in it"
        assert not [o for o in docs if o["kind"] == "Secret"], f"{name}: Secrets are created outside the manifests"
        for _, pod in pod_templates(docs):
            for c in containers(pod):
                assert "envFrom" not in c, f"{name}: {c['name']}: name each variable, so secrets are visible here"
                for var, entry in env_of(c).items():
                    if SECRETISH.search(var):
                        ref = entry.get("valueFrom", {}).get("secretKeyRef")
                        assert ref, f"{name}: {c['name']}: {var} must come from a Secret (secretKeyRef), not a value"
        for o in docs:
            named.update(secret_refs(o))
    assert {("hpo-database", "url"), ("hpo-worker-token", "token"), ("hpo-metrics", "token")} <= named
    for secret, key in named:
        assert f"`{secret}`" in readme, f"deploy/kubernetes/README.md does not say how to create Secret {secret}"
        if key:
            assert f"`{key}`" in readme


# --------------------------------------------------------------------------- the API tier


def test_api_deployment_replicas_probes_resources_pdb_service_ingress(renders):
    for name in ("production", "try-out"):
        docs = renders[name]
        deployment = find(docs, "Deployment", "hpo-api")
        assert deployment["spec"]["replicas"] >= 2
        pod = deployment["spec"]["template"]
        api = api_container(docs)
        assert api["command"] == ["hpo", "serve"]
        assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert api["resources"]["requests"]["cpu"] and api["resources"]["requests"]["memory"]
        # The probes' port is the one `hpo serve` listens on.
        port = int(env_of(api)["HPO_PORT"]["value"])
        ports = {p.get("name"): p["containerPort"] for p in api["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in api:
                target = api[probe]["httpGet"]["port"]
                assert ports.get(target, target) == port, f"{name}: {probe} on {target}"
        assert env_of(api)["HPO_HOST"]["value"] == "0.0.0.0"
        # Migrations first: an init container (migrate is safe from many processes at once).
        assert [c["command"] for c in pod["spec"]["initContainers"]] == [["hpo", "migrate"]]
        pdbs = [o for o in docs if o["kind"] == "PodDisruptionBudget" and selects(o["spec"]["selector"], pod["metadata"]["labels"])]
        assert len(pdbs) == 1 and pdbs[0]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        service = find(docs, "Service", "hpo-api")
        assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
        assert any(p["targetPort"] in (port, "http") and p["port"] == port for p in service["spec"]["ports"])
        ingress = find(docs, "Ingress", "hpo-api")
        hosts = {r["host"] for r in ingress["spec"]["rules"]}
        assert hosts and hosts <= {h for t in ingress["spec"]["tls"] for h in t["hosts"]}, "every Ingress host needs TLS"
        assert all(t.get("secretName") for t in ingress["spec"]["tls"])
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "hpo-api" and backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_database_is_external_by_default_and_in_cluster_on_request(renders):
    assert not objects(renders, "StatefulSet", "production")
    (_, pg), = objects(renders, "StatefulSet", "try-out")
    service = find(renders["try-out"], "Service", "hpo-postgres")
    assert service and selects({"matchLabels": service["spec"]["selector"]}, pg["spec"]["template"]["metadata"]["labels"])
    assert pg["spec"]["volumeClaimTemplates"], "the try-out database keeps its data on a volume"


def test_the_bootstrap_job_may_only_read_its_own_secret(renders):
    docs = renders["production"]
    job = find(docs, "Job", "hpo-bootstrap")
    pod = job["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "bootstrap")
    secret = container["command"][2]
    account = pod["serviceAccountName"]
    bindings = [b for b in docs if b["kind"] == "RoleBinding" and any(s["name"] == account for s in b["subjects"])]
    assert [b["roleRef"]["name"] for b in bindings] == [account]
    assert not [b for b in docs if b["kind"] == "ClusterRoleBinding"]
    role = find(docs, "Role", account)
    rules = sorted((tuple(r["verbs"]), tuple(r["resources"]), tuple(r.get("resourceNames", []))) for r in role["rules"])
    assert rules == [(("create",), ("secrets",), ()), (("get",), ("secrets",), (secret,))]
    # Nothing else mounts a service-account token.
    for _, other in pod_templates(docs):
        if other["spec"] is not pod:
            assert other["spec"].get("automountServiceAccountToken") is False


# --------------------------------------------------------------------------- workers


def worker_pods(renders) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, owner, pod) for name, docs in renders.items() for owner, pod in pod_templates(docs)
            if any(c.get("command", [None, None])[:2] == ["hpo", "worker"] for c in pod["spec"]["containers"])]


def test_workers_ask_for_one_gpu_shm_slots_a_token_and_time_to_finish_an_epoch(renders):
    pods = worker_pods(renders)
    assert {name for name, _, _ in pods} == {o for o in OVERLAYS if o.startswith("gpu-")} | {"spot"}
    for name, owner, pod in pods:
        where = f"{name}: {owner['kind']}/{owner['metadata']['name']}"
        spec = pod["spec"]
        (worker,) = [c for c in spec["containers"] if c["command"][:2] == ["hpo", "worker"]]
        assert str(worker["resources"]["limits"].get("nvidia.com/gpu")) == "1", f"{where}: no GPU limit"
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), where
        assert spec.get("nodeSelector") or spec.get("affinity"), f"{where}: no node placement"
        env = env_of(worker)
        assert int(env["HPO_SLOTS"]["value"]) >= 1
        assert env["HPO_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hpo-worker-token", "key": "token"}
        assert "HPO_DATABASE_URL" not in env, f"{where}: workers never get the database"
        assert urlsplit(env["HPO_SERVER_URL"]["value"]).hostname == "hpo-api"
        shm = next(m for m in worker["volumeMounts"] if m["mountPath"] == "/dev/shm")
        volume = next(v for v in spec["volumes"] if v["name"] == shm["name"])
        assert volume["emptyDir"]["medium"] == "Memory"
        # Longer than an epoch: SIGTERM lets the worker finish it (README: Workers).
        assert spec["terminationGracePeriodSeconds"] >= 100, where
    gpu_pools = [owner for _, owner, _ in pods if owner["kind"] == "Deployment"]
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True) for d in gpu_pools]
    assert len(set(selectors)) == len(selectors), "two pools' Deployments would own each other's pods"


def test_keda_scales_every_pool_on_the_queue_with_the_worker_token(renders):
    api_docs = renders["production"]
    service = find(api_docs, "Service", "hpo-api")
    scaled = triggers(renders)
    expected = {(n, "ScaledObject") for n in OVERLAYS if n.startswith("gpu-")} | {("spot", "ScaledJob")}
    assert {(name, o["kind"]) for name, o, _ in scaled} == expected
    for name, o, trigger in scaled:
        where = f"{name}: {o['kind']}/{o['metadata']['name']}"
        docs = renders[name]
        assert trigger["type"] == "metrics-api"
        meta = trigger["metadata"]
        url = urlsplit(meta["url"])
        # The KEDA operator runs in its own namespace: the Service's full name, its port.
        assert url.hostname in {f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc",
                                f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"}, where
        assert url.port in {p["port"] for p in service["spec"]["ports"]}, where
        assert url.path == QUEUE_PATH and not url.query, where
        assert meta.get("format", "json") == "json"
        assert meta.get("authModes", meta.get("authMode")) == "bearer", f"{where}: the queue needs a bearer token"
        ref = trigger["authenticationRef"]
        assert ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
        auth = find(docs, "TriggerAuthentication", ref["name"])
        assert auth is not None, f"{where}: no TriggerAuthentication {ref['name']}"
        (target,) = auth["spec"]["secretTargetRef"]
        assert target["parameter"] in ("token", "bearerToken")
        # The worker's own token: a worker token may read its team's queue.
        scaled_name = o["spec"].get("scaleTargetRef", {}).get("name")
        pods = [pod for owner, pod in pod_templates(docs)
                if owner is o or (o["kind"] == "ScaledObject" and owner["kind"] == "Deployment" and owner["metadata"]["name"] == scaled_name)]
        assert len(pods) == 1, f"{where}: scales no pod of this overlay"
        worker = pods[0]["spec"]["containers"][0]
        assert env_of(worker)["HPO_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": target["name"], "key": target["key"]}
        # One pod takes HPO_SLOTS trials at once.
        assert float(meta["targetValue"]) == float(env_of(worker)["HPO_SLOTS"]["value"]), where
        if o["kind"] == "ScaledObject":
            assert o["spec"]["minReplicaCount"] == 0, f"{where}: the pool must go to zero on an empty queue"
        else:
            argv = worker["command"] + worker.get("args", [])
            assert "--exit-when-idle" in argv, f"{where}: a job's worker must end when the queue is empty"


# --------------------------------------------------------------------------- network policies


def allowed_peers(policies: list[dict[str, Any]], labels: dict[str, str], direction: str) -> list[dict[str, Any]] | None:
    """The rules that let traffic in (or out) of a pod with these labels; None when no policy of
    that direction selects it (everything allowed)."""
    policy_type = {"ingress": "Ingress", "egress": "Egress"}[direction]
    chosen = [p for p in policies if policy_type in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)]
    if not chosen:
        return None
    return [rule for p in chosen for rule in p["spec"].get(direction, [])]


def test_only_the_api_reaches_postgres_and_workers_reach_only_the_api(renders):
    docs = renders["try-out"]
    policies = [o for o in docs if o["kind"] == "NetworkPolicy"]
    pods = {f"{owner['kind']}/{owner['metadata']['name']}": pod for owner, pod in pod_templates(docs)}
    pods.update({f"{name}:{owner['metadata']['name']}": pod for name, owner, pod in worker_pods(renders)})
    api_labels = pods["Deployment/hpo-api"]["metadata"]["labels"]
    db_clients = {k for k, pod in pods.items() if any("HPO_DATABASE_URL" in env_of(c) for c in containers(pod))}
    assert db_clients == {"Deployment/hpo-api", "Job/hpo-bootstrap"}

    rules = allowed_peers(policies, pods["StatefulSet/hpo-postgres"]["metadata"]["labels"], "ingress")
    assert rules, "PostgreSQL takes connections from anyone"
    for rule in rules:
        assert rule.get("from"), "a rule without `from` lets every pod in"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, f"PostgreSQL open to {peer}"
            reached = {k for k, pod in pods.items() if selects(peer["podSelector"], pod["metadata"]["labels"])}
            assert reached <= db_clients, f"PostgreSQL reachable from {reached - db_clients}"
            assert "Deployment/hpo-api" in reached

    workers = [k for k in pods if k.startswith(tuple(f"{n}:" for n in OVERLAYS))]
    assert workers
    for key in workers:
        labels = pods[key]["metadata"]["labels"]
        assert allowed_peers(policies, labels, "ingress") == [], f"{key} takes connections"
        rules = allowed_peers(policies, labels, "egress")
        assert rules, f"{key} may connect anywhere"
        for rule in rules:
            ports = {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}
            assert rule.get("to") and ports, f"{key}: an egress rule open to everything"
            for peer in rule["to"]:
                if ports <= {("UDP", 53), ("TCP", 53)}:
                    assert peer.get("namespaceSelector") and peer.get("podSelector"), f"{key}: DNS to any pod"
                    continue
                assert set(peer) == {"podSelector"}, f"{key} may reach {peer}"
                reached = {k for k, pod in pods.items() if selects(peer["podSelector"], pod["metadata"]["labels"])}
                assert reached == {"Deployment/hpo-api"}, f"{key} may reach {reached}"
                assert selects(peer["podSelector"], api_labels)
                assert ports == {("TCP", int(env_of(api_container(docs))["HPO_PORT"]["value"]))}


# --------------------------------------------------------------------------- metrics


def test_the_metrics_token_comes_from_a_secret_and_the_servicemonitor_sends_it(renders):
    docs = renders["production"]
    api = api_container(docs)
    ref = env_of(api)["HPO_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    (monitor,) = [o for o in docs if o["kind"] == "ServiceMonitor"]
    service = find(docs, "Service", "hpo-api")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint.get("authorization", {}).get("credentials") or endpoint.get("bearerTokenSecret")
    assert credentials == {"name": ref["name"], "key": ref["key"]}
    assert endpoint.get("authorization", {}).get("type", "Bearer") == "Bearer"
    text = (K8S / "components" / "servicemonitor" / "kustomization.yaml").read_text()
    assert "prometheus.io/scrape" in text and "token" in text, "say why the scrape annotations are not enough"


