#!/usr/bin/env python3
"""Renders the Helm chart with every value set in deploy/helm/ci through the official Helm SDK
(helm-python-sdk: no helm binary), lints it, checks values.schema.json, validates every
rendered Kubernetes object with kubernetes-validate against a current Kubernetes version, and
checks what each value set must produce. Exits non-zero on the first problem."""

import json
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/herald"
K8S_VERSION = "1.34.0"
# Custom resources kubernetes-validate has no schema for; checked by the assertions below.
CRDS = {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}


def fail(message):
    print(f"chart check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def render(chart, values):
    chart.validate_schema(values)
    manifests = chart.render(values, name="herald", namespace="herald")
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                objects.append(obj)
    return objects


def validate(objects, label):
    for obj in objects:
        what = f"{label}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion") in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{what} is invalid: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{what}: no schema ({e})")


def kinds(objects):
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def main():
    lint = helm.lint(str(CHART))
    for m in lint["messages"]:
        print(f"lint [{m['severity']}] {m['path']}: {m['error']}")
    if lint["errors"] or any(m["severity"] >= 3 for m in lint["messages"]):
        fail("helm lint reports errors")

    with helm.Chart.load(str(CHART)) as chart:
        # The schema refuses nonsense.
        for bad in ({"config": {"replicas": 2}}, {"nats": {"url": "http://nats"}}, {"dispatcher": {"replicaCount": -1}}):
            try:
                chart.validate_schema(bad)
            except Exception:
                continue
            fail(f"values.schema.json accepted {bad}")

        results = {}
        for values_file in sorted((ROOT / "deploy/helm/ci").glob("*.yaml")):
            values = yaml.safe_load(values_file.read_text()) or {}
            objects = render(chart, values)
            validate(objects, values_file.name)
            results[values_file.stem] = objects
            print(f"{values_file.name}: {len(objects)} objects valid for Kubernetes {K8S_VERSION}: {', '.join(kinds(objects))}")

    d = results["defaults"]
    deployments = {o["metadata"]["name"]: o for o in by_kind(d, "Deployment")}
    if set(deployments) != {"herald-gateway", "herald-dispatcher"}:
        fail(f"defaults: deployments {sorted(deployments)}")
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        ctx = pod["containers"][0]["securityContext"]
        if not (pod["securityContext"]["runAsNonRoot"] and ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]):
            fail(f"{name}: not locked down")
        probes = pod["containers"][0]
        if "readinessProbe" not in probes or "livenessProbe" not in probes:
            fail(f"{name}: probes missing")
    dispatcher = deployments["herald-dispatcher"]["spec"]["template"]["spec"]
    grace = next(e["value"] for e in dispatcher["containers"][0]["env"] if e["name"] == "HERALD_SHUTDOWN_GRACE")
    if dispatcher["terminationGracePeriodSeconds"] <= int(grace.rstrip("s")):
        fail("the pod's termination grace must exceed the dispatcher's drain")
    if len(by_kind(d, "PodDisruptionBudget")) != 2 or len(by_kind(d, "Secret")) != 1:
        fail("defaults: PDBs or Secret missing")
    if by_kind(d, "ScaledObject") or by_kind(d, "ServiceMonitor") or by_kind(d, "HorizontalPodAutoscaler"):
        fail("defaults: optional objects rendered")
    if not by_kind(results["keda"], "ScaledObject"):
        fail("keda: no ScaledObject")
    # A trigger pair per partition (keda.yaml sets three): partition 0's streams keep their names.
    triggers = by_kind(results["keda"], "ScaledObject")[0]["spec"]["triggers"]
    streams = sorted(t["metadata"]["stream"] for t in triggers)
    wanted = sorted(f"HERALD_{kind}{suffix}" for kind in ("DELIVERIES", "EVENTS") for suffix in ("", "_1", "_2"))
    if streams != wanted:
        fail(f"keda: triggers on {streams}, wanted {wanted}")
    for name, dep in ((o["metadata"]["name"], o) for o in by_kind(results["keda"], "Deployment")):
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        if env.get("HERALD_PARTITIONS") != "3":
            fail(f"keda: {name} is not given HERALD_PARTITIONS=3: {env.get('HERALD_PARTITIONS')}")
    if any(h["metadata"]["name"].endswith("dispatcher") for h in by_kind(results["keda"], "HorizontalPodAutoscaler")):
        fail("keda: an HPA would fight KEDA")
    if not by_kind(results["servicemonitor"], "ServiceMonitor"):
        fail("servicemonitor: none rendered")
    # The alerting rules and the dashboard ship as they are in files/ (checked by
    # scripts/check-observability.py).
    rules = by_kind(results["servicemonitor"], "PrometheusRule")
    shipped = yaml.safe_load((CHART / "files/alerts.yaml").read_text())
    if not rules or rules[0]["spec"] != shipped:
        fail("servicemonitor: the PrometheusRule is missing or differs from files/alerts.yaml")
    boards = [c for c in by_kind(results["servicemonitor"], "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    if not boards or json.loads(boards[0]["data"]["herald.json"]) != json.loads((CHART / "files/herald-dashboard.json").read_text()):
        fail("servicemonitor: the dashboard ConfigMap is missing or differs from files/herald-dashboard.json")
    if by_kind(d, "PrometheusRule") or by_kind(d, "ConfigMap"):
        fail("defaults: the PrometheusRule or dashboard rendered without being asked for")
    if by_kind(results["existing-secret"], "Secret"):
        fail("existing-secret: a Secret was created anyway")
    ext = results["external-nats"]
    if not by_kind(ext, "Ingress") or not by_kind(ext, "HorizontalPodAutoscaler"):
        fail("external-nats: Ingress or HPA missing")
    env = {e["name"]: e.get("value") for e in by_kind(ext, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    if env.get("HERALD_NATS_URL") != "tls://nats.messaging.svc:4222" or env.get("HERALD_NATS_CREDS") != "/etc/herald/nats.creds":
        fail(f"external-nats: NATS settings not passed: {env}")
    # Stream replicas: 1 against an external server unless set, 3 with the bundled NATS cluster.
    def replicas(objects):
        env = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "HERALD_REPLICAS")
    if replicas(d) != "1":
        fail(f"defaults: HERALD_REPLICAS {replicas(d)}, expected 1")
    bundled = results["bundled-nats"]
    if replicas(bundled) != "3":
        fail(f"bundled-nats: HERALD_REPLICAS {replicas(bundled)}, expected 3 on the bundled cluster")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cluster = defaults["nats"]["config"]["cluster"]
    if not (cluster["enabled"] and cluster["replicas"] >= 3 and defaults["nats"]["config"]["jetstream"]["enabled"]):
        fail(f"the bundled NATS is not a JetStream cluster of three: {defaults['nats']['config']}")
    # Egress: the proxy settings and the CA bundle reach the dispatcher (and only it).
    eg = results["egress"]
    dispatcher = next(o for o in by_kind(eg, "Deployment") if o["metadata"]["name"].endswith("dispatcher"))
    pod = dispatcher["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    want = {"HERALD_PROXY_URL": "http://smokescreen.egress.svc:4750", "HERALD_NO_PROXY": ".internal.example.com,10.0.0.0/8", "HERALD_CA_FILE": "/etc/herald-ca/ca.pem"}
    if any(env.get(k) != v for k, v in want.items()):
        fail(f"egress: dispatcher env {env}")
    ca = [c for c in by_kind(eg, "ConfigMap") if c["metadata"]["name"].endswith("-ca")]
    if not ca or "BEGIN CERTIFICATE" not in ca[0]["data"]["ca.pem"]:
        fail("egress: no CA bundle ConfigMap")
    if not any(v.get("configMap", {}).get("name") == ca[0]["metadata"]["name"] for v in pod["volumes"]):
        fail("egress: the CA bundle is not mounted")
    if any(e["name"].startswith("HERALD_PROXY") for o in by_kind(d, "Deployment") for e in o["spec"]["template"]["spec"]["containers"][0]["env"]):
        fail("defaults: proxy settings rendered without being set")
    # Routing settings: schema validation reaches both services, the operator tenant the dispatcher.
    for o in by_kind(d, "Deployment"):
        env = {e["name"]: e.get("value") for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}
        if env.get("HERALD_SCHEMA_VALIDATION") != "enforce":
            fail(f"defaults: {o['metadata']['name']} has HERALD_SCHEMA_VALIDATION {env.get('HERALD_SCHEMA_VALIDATION')}")
        if o["metadata"]["name"].endswith("dispatcher") and env.get("HERALD_OPERATOR_TENANT") != "herald":
            fail(f"defaults: the dispatcher's HERALD_OPERATOR_TENANT is {env.get('HERALD_OPERATOR_TENANT')}")
    print(f"chart check: {len(results)} value sets rendered and validated")


if __name__ == "__main__":
    main()
