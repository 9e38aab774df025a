"""Every manifest under deploy/ parses and passes schema validation for its kind: Kubernetes'
own objects with kubernetes-validate (strict: unknown fields fail); KServe's and Seldon's kinds
against the field lists of their CRDs (tests/data/crds, taken from the CRDs' openAPIV3Schema),
with the Kubernetes objects embedded in them (containers, pod specs, env, resources, probes)
validated by kubernetes-validate. And the values the runtime reads are valid for it."""
import json
from typing import Any, Dict, Iterator, List, Tuple

import kubernetes_validate
import pytest
import yaml

from mlserver_npu import NPURuntime
from mlserver_npu.settings import NPUSettings
from server import REPO

KUBERNETES_VERSION = "1.30"
CRDS = {
    (crd["apiVersion"], crd["kind"]): crd
    for crd in (json.loads(p.read_text()) for p in (REPO / "tests/data/crds").glob("*.json"))
}
MANIFESTS = sorted((REPO / "deploy").rglob("*.yaml"))
IMPLEMENTATION = f"{NPURuntime.__module__.split('.')[0]}.{NPURuntime.__name__}"
JSON_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list,
              "number": (int, float)}


def documents() -> List[Tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(REPO)}#{index}", doc))
    return docs


def of_kind(kind: str) -> List[dict]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def walk(value: Any, path: str = "") -> Iterator[Tuple[str, str, Any]]:
    """(schema path with [] for list items, the key, value) of every node below `value`."""
    if isinstance(value, dict):
        for key, sub in value.items():
            sub_path = f"{path}.{key}" if path else key
            yield sub_path, key, sub
            yield from walk(sub, sub_path)
    elif isinstance(value, list):
        for item in value:
            yield path + "[]", "", item
            yield from walk(item, path + "[]")


def pod(spec: dict = None, metadata: dict = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata or {"name": "check"},
            "spec": {"containers": [{"name": "check"}], **(spec or {})}}


def as_pod(kind: str, key: str, value: Any) -> dict:
    """A Pod that holds the embedded Kubernetes object `value`, for kubernetes-validate."""
    if kind == "core:metadata":
        return pod(metadata=value)
    if kind == "core:containers":
        return pod({"containers": value})
    if kind == "core:podspec":
        return pod(value)
    if kind == "core:podspec-field":
        return pod({key: value})
    if kind == "core:container-field":
        return pod({"containers": [{"name": "check", key: value}]})
    raise AssertionError(f"unknown core kind {kind}")


def crd_problems(doc: dict) -> List[str]:
    """What in `doc` its CRD's field list does not allow; embedded core objects validated."""
    crd = CRDS[(doc["apiVersion"], doc["kind"])]
    fields, problems = crd["fields"], []
    checked_whole = []  # core objects and maps: what is below them is checked with them
    for path, key, value in walk({k: v for k, v in doc.items() if k in ("metadata", "spec")}):
        if any(path.startswith((whole + ".", whole + "[")) for whole in checked_whole):
            continue
        declared = fields.get(path)
        if declared is None:
            problems.append(f"{path}: not a field of {doc['kind']}")
            continue
        if declared.startswith(("core:", "map of")):
            checked_whole.append(path)
        if declared.startswith("core:"):
            try:
                kubernetes_validate.validate(
                    as_pod(declared, key, value), KUBERNETES_VERSION, strict=True
                )
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{path}: {error.message}")
        elif declared.startswith("map of"):
            wanted = JSON_TYPES.get(declared.split()[-1])
            if not isinstance(value, dict) or (
                wanted and not all(isinstance(v, wanted) for v in value.values())
            ):
                problems.append(f"{path}: should be a {declared}")
        else:
            wanted = JSON_TYPES.get(declared.split()[0])
            is_bool = isinstance(value, bool)  # a bool is an int to Python, not to the schema
            if wanted and (not isinstance(value, wanted) or is_bool != (wanted is bool)):
                problems.append(f"{path}: should be {declared}, not {value!r}")
            if " enum " in declared and value not in declared.split(" enum ")[1].split(","):
                problems.append(f"{path}: should be one of {declared.split(' enum ')[1]}")
    for path, required in crd["required"].items():
        for node in nodes(doc, path):
            problems += [f"{path}.{r}: required" for r in required if r not in node]
    return problems


def nodes(doc: Any, path: str) -> List[Any]:
    """The values at a schema path ([] expands lists)."""
    found = [doc]
    for part in path.replace("[]", ".[]").split("."):
        if part == "[]":
            found = [item for value in found if isinstance(value, list) for item in value]
        else:
            found = [value[part] for value in found if isinstance(value, dict) and part in value]
    return found


@pytest.mark.parametrize("where, doc", documents(), ids=[where for where, _ in documents()])
def test_manifest_is_valid_for_its_kind(where, doc):
    if (doc["apiVersion"], doc["kind"]) in CRDS:
        assert crd_problems(doc) == []
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_kind_is_checked():
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"ClusterServingRuntime", "InferenceService", "Server", "Model", "Deployment",
            "NetworkPolicy", "Ingress"} <= kinds


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d["spec"]["predictor"]["model"].update(storageUrl="s3://x"),
     "spec.predictor.model.storageUrl: not a field of InferenceService"),
    (lambda d: d["spec"]["predictor"].update(minReplicas="one"),
     "spec.predictor.minReplicas: should be integer"),
    (lambda d: d["spec"]["predictor"]["model"]["env"].append({"name": "X", "value": 1}),
     "spec.predictor.model.env: 1 is not of type 'string'"),
    (lambda d: d["spec"]["predictor"]["model"]["resources"].update(limit={}),
     "spec.predictor.model.resources: Additional properties are not allowed"),
    (lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name"),
     "spec.predictor.model.modelFormat.name: required"),
])
def test_the_checks_catch_mistakes(mutate, problem):
    """The field lists and the embedded validation have teeth: a typo, a wrong type, a bad
    env value, an unknown key of a core object, a missing required field."""
    (doc,) = [d for d in of_kind("InferenceService") if d["metadata"]["name"] == "digits"]
    assert crd_problems(doc) == []
    mutate(doc)
    assert any(p.startswith(problem) for p in crd_problems(doc)), crd_problems(doc)


def env(container: dict) -> Dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_kserve_runtime_starts_our_runtime_on_v2():
    (runtime,) = of_kind("ClusterServingRuntime")
    assert runtime["metadata"]["annotations"]["serving.kserve.io/server-type"] == "mlserver"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert {"onnx", "tflite", "openvino"} <= formats
    (container,) = runtime["spec"]["containers"]
    assert env(container)["MLSERVER_MODEL_IMPLEMENTATION"] == IMPLEMENTATION
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for service in of_kind("InferenceService"):
        assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def test_inference_services_extra_is_valid_for_the_runtime():
    """MLSERVER_MODEL_EXTRA of each InferenceService is JSON that the runtime accepts."""
    for service in of_kind("InferenceService"):
        extra = json.loads(env(service["spec"]["predictor"]["model"])["MLSERVER_MODEL_EXTRA"])
        NPUSettings.model_validate(extra)


def test_seldon_models_fit_the_server_and_the_runtime():
    (server,) = of_kind("Server")
    assert server["spec"]["serverConfig"] == "mlserver"
    capabilities = set(server["spec"]["extraCapabilities"])
    assert {"npu", "onnx", "tflite"} <= capabilities
    (container,) = server["spec"]["podSpec"]["containers"]
    assert container["name"] == "mlserver"  # merged into the ServerConfig's container
    assert env(container)["MLSERVER_MODEL_IMPLEMENTATION"] == IMPLEMENTATION
    for model in of_kind("Model"):
        assert set(model["spec"]["requirements"]) <= capabilities
        parameters = {p["name"]: p["value"] for p in model["spec"]["parameters"]}
        assert all(isinstance(v, str) for v in parameters.values())
        NPUSettings.model_validate(parameters)
