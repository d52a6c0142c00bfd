"""Policy checks on a rendered chart (scripts/check-manifests.sh): what kubernetes-validate
cannot see. Usage: check_chart_policy.py RENDERED.yaml LABEL"""

import sys

import yaml

ALLOWED_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
SECRET_VERBS = {"get", "list", "watch"}


def main(path: str, label: str) -> int:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = []
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)

    for role in kinds.get("ClusterRole", []) + kinds.get("Role", []):
        name = role["metadata"]["name"]
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    errors.append(f"{name}: wildcard in {field}")
            verbs = set(rule.get("verbs", []))
            if verbs - ALLOWED_VERBS:
                errors.append(f"{name}: unexpected verbs {sorted(verbs - ALLOWED_VERBS)}")
            if "secrets" in rule.get("resources", []) and verbs - SECRET_VERBS:
                errors.append(f"{name}: secrets must be read-only, got {sorted(verbs)}")

    deployments = kinds.get("Deployment", [])
    if len(deployments) != 1:
        errors.append(f"expected one Deployment, got {len(deployments)}")
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append("pod securityContext.runAsNonRoot must be true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append("pod seccompProfile must be RuntimeDefault")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{c['name']}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{c['name']}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{c['name']}: capabilities must drop ALL")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                    errors.append(f"{c['name']}: {probe} must GET {path}")
            if not c.get("resources", {}).get("requests"):
                errors.append(f"{c['name']}: resource requests missing")
            env = {e["name"] for e in c.get("env", [])}
            for var in ("DEFAULT_API_IMAGE", "LEADER_ELECTION", "RUST_LOG",
                        "LOG_FORMAT", "POD_NAME", "POD_NAMESPACE", "HTTP_ADDR"):
                if var not in env:
                    errors.append(f"{c['name']}: env {var} missing")
            ns_env = next((e.get("value") for e in c.get("env", []) if e["name"] == "WATCH_NAMESPACE"), None)
            if ns_env == "":
                errors.append(f"{c['name']}: WATCH_NAMESPACE must be unset, not empty, to watch all namespaces")
        replicas = dep["spec"].get("replicas", 1)
        le = next((e.get("value") for c in pod["containers"] for e in c.get("env", [])
                   if e["name"] == "LEADER_ELECTION"), None)
        if replicas > 1 and le != "true":
            errors.append("replicas > 1 without leader election")

    for crd in kinds.get("CustomResourceDefinition", []):
        ann = crd["metadata"].get("annotations", {})
        if ann.get("helm.sh/resource-policy") != "keep":
            errors.append(f"{crd['metadata']['name']}: missing helm.sh/resource-policy: keep")

    for np in kinds.get("NetworkPolicy", []):
        for rule in np["spec"].get("egress", []):
            for peer in rule.get("to", []):
                cidr = peer.get("ipBlock", {}).get("cidr")
                if cidr in ("0.0.0.0/0", "::/0"):
                    errors.append("NetworkPolicy egress to the whole internet")

    for e in errors:
        print(f"policy ({label}): {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
