"""Policy checks on a rendered chart (scripts/check-manifests.sh): what kubernetes-validate
cannot see. Usage: check_chart_policy.py RENDERED.yaml LABEL [CONTROLLER_RS]

With CONTROLLER_RS (operator/src/controller.rs), the rendered roles must grant exactly the
permissions in its "Required RBAC" table: nothing missing (no `forbidden` at runtime) and
nothing extra (least privilege). Rows marked "operator namespace only" must be granted by the
release namespace's own Roles (`*-leader-election`, `*-hash-key`), the others by the main
(Cluster)Role(s)."""

import re
import sys

import yaml

ALLOWED_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
SECRET_VERBS = {"get", "list", "watch"}
# The hash-key Role: get by name, and create (which resourceNames cannot limit).
HASH_KEY_SECRET = "scalable-api-operator-hash-key"
OWN_NAMESPACE_ROLE_SUFFIXES = ("-leader-election", "-hash-key")
# ClusterRoles for people, aggregated into the default view/edit/admin roles: only
# ScalableApis, never anything of the operator's.
AGGREGATE_LABEL_PREFIX = "rbac.authorization.k8s.io/aggregate-to-"
USER_RESOURCES = {"scalableapis", "scalableapis/status", "scalableapis/scale"}
USER_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def aggregated(role: dict) -> bool:
    labels = role["metadata"].get("labels") or {}
    return any(k.startswith(AGGREGATE_LABEL_PREFIX) for k in labels)


def declared_rbac(controller_rs: str):
    """(group, resource, verbs, operator_namespace_only) rows of the controller's RBAC table."""
    rows = []
    in_table = False
    with open(controller_rs, encoding="utf-8") as f:
        for line in f:
            text = line.removeprefix("//!").strip()
            if text.startswith("```text"):
                in_table = True
                continue
            if in_table and text.startswith("```"):
                break
            if not in_table or not text:
                continue
            cols = re.split(r"\s{2,}", text)
            if len(cols) < 3:
                continue
            group = "" if cols[0] == '""' else cols[0]
            verbs = set(cols[2].split())
            namespaced = len(cols) > 3 and "operator namespace" in cols[3]
            for resource in (r.strip() for r in cols[1].split(",")):
                rows.append((group, resource, verbs, namespaced))
    return rows


def granted(roles, group, resource):
    verbs = set()
    for role in roles:
        for rule in role.get("rules", []):
            if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
                verbs |= set(rule.get("verbs", []))
    return verbs


def main(path: str, label: str, controller_rs: str = "") -> int:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = []
    kinds = {}
    user_roles = [d for d in docs if d["kind"] == "ClusterRole" and aggregated(d)]
    for d in docs:
        if d in user_roles:
            continue
        kinds.setdefault(d["kind"], []).append(d)
    for role in user_roles:
        name = role["metadata"]["name"]
        for rule in role.get("rules", []):
            if rule.get("apiGroups") != ["scalable.dev"]:
                errors.append(f"{name}: an aggregated role may only grant scalable.dev, got {rule.get('apiGroups')}")
            if set(rule.get("resources", [])) - USER_RESOURCES:
                errors.append(f"{name}: an aggregated role may only grant {sorted(USER_RESOURCES)}")
            if set(rule.get("verbs", [])) - USER_VERBS:
                errors.append(f"{name}: unexpected verbs {sorted(set(rule.get('verbs', [])) - USER_VERBS)}")

    for role in kinds.get("ClusterRole", []) + kinds.get("Role", []):
        name = role["metadata"]["name"]
        for rule in role.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    errors.append(f"{name}: wildcard in {field}")
            verbs = set(rule.get("verbs", []))
            if verbs - ALLOWED_VERBS:
                errors.append(f"{name}: unexpected verbs {sorted(verbs - ALLOWED_VERBS)}")
            if "secrets" in rule.get("resources", []):
                if name.endswith("-hash-key") and role["kind"] == "Role":
                    if verbs - {"get", "create"}:
                        errors.append(f"{name}: the hash-key Secret needs only get and create, got {sorted(verbs)}")
                    if "get" in verbs and rule.get("resourceNames") != [HASH_KEY_SECRET]:
                        errors.append(f"{name}: get on Secrets must be limited to {HASH_KEY_SECRET}")
                elif verbs - SECRET_VERBS:
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

    if controller_rs and (kinds.get("ClusterRole") or kinds.get("Role")):
        rows = declared_rbac(controller_rs)
        if not rows:
            errors.append(f"no RBAC table found in {controller_rs}")
        own_ns_roles = [r for r in kinds.get("Role", [])
                       if r["metadata"]["name"].endswith(OWN_NAMESPACE_ROLE_SUFFIXES)]
        main_roles = [r for r in kinds.get("ClusterRole", []) + kinds.get("Role", [])
                      if r not in own_ns_roles]
        # Each scope (the ClusterRole, or the Role of one watched namespace) must grant the
        # whole table on its own: a union over namespaces would hide a Role that lacks a verb.
        scopes = {}
        for role in main_roles:
            scope = role["metadata"].get("namespace") if role["kind"] == "Role" else None
            scopes.setdefault(scope, []).append(role)
        watched = set()
        for dep in deployments:
            for c in dep["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] in ("WATCH_NAMESPACE", "WATCH_NAMESPACES"):
                        watched |= {ns.strip() for ns in e.get("value", "").split(",") if ns.strip()}
        if watched and set(scopes) != watched:
            errors.append(f"the operator watches {sorted(watched)}, but the main Roles are in "
                          f"{sorted(str(s) for s in scopes)} (a Role in each watched namespace, "
                          "and no ClusterRole)")
        if not watched and set(scopes) != {None}:
            errors.append("the operator watches all namespaces: the main rules must be one ClusterRole")
        declared = set()
        for group, resource, verbs, own_ns_only in rows:
            declared.add((group, resource, own_ns_only))
            groups = {"operator namespace": own_ns_roles} if own_ns_only else {
                scope or "cluster": roles for scope, roles in scopes.items()}
            for where, roles in groups.items():
                have = granted(roles, group, resource)
                if verbs - have:
                    errors.append(f"{group or 'core'}/{resource} ({where}): operator needs "
                                  f"{sorted(verbs - have)} (declared in {controller_rs}), chart grants {sorted(have)}")
                if have - verbs:
                    errors.append(f"{group or 'core'}/{resource} ({where}): chart grants "
                                  f"{sorted(have - verbs)} that {controller_rs} does not declare")
        for own_ns_only, roles in ((False, main_roles), (True, own_ns_roles)):
            for role in roles:
                for rule in role.get("rules", []):
                    for group in rule.get("apiGroups", []):
                        for resource in rule.get("resources", []):
                            if (group, resource, own_ns_only) not in declared:
                                errors.append(f"{role['metadata']['name']}: grants "
                                              f"{group or 'core'}/{resource}, not declared in "
                                              f"{controller_rs}")

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
    sys.exit(main(*sys.argv[1:4]))
