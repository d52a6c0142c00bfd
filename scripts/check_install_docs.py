#!/usr/bin/env python3
"""Checks the install instructions a reader is given (README.md, docs/operations.md, the chart
README and the chart's NOTES.txt as `helm install` prints it) against what this repository has.

  check_install_docs.py EXAMPLES_DIR FILE...

1. Install sources. Nothing is published until a release is made, so outside a block marked

       <!-- after-a-release -->  ...text that says "after a release"...  <!-- /after-a-release -->

   no line may name a published source: `oci://`, raw.githubusercontent.com, `helm repo add`,
   `helm pull`, a `kubectl`/`helm` command with an http(s) URL, a pull of a ghcr.io image, or a
   `helm install`/`upgrade` of any chart but ./charts/scalable-api-operator.
2. Names. examples/ agree with each other (a ScalableApi whose database host is a Service of
   postgres-dev.yaml names its Secret, key, database and user), and the docs agree with
   examples/: a Secret created by hand is one an example references (with that key); a
   `rollout status statefulset/X` names postgres-dev.yaml's StatefulSet; every
   `apply -f examples/X` exists; within one code block, a Secret created by hand is one an
   example applied in that namespace uses; and, within one code block (NOTES.txt is one block), a
   `wait --for=condition=Ready sapi/X` follows the `apply` of the example named X in the same
   namespace, and, when that example uses the dev Postgres, the `apply` of
   examples/postgres-dev.yaml in that namespace before it (a quick start without its database
   never becomes Ready).
Prints one line per problem; exits 1 if there is any.
"""

import glob
import os
import re
import sys

import yaml

CHART_SOURCES = {"./charts/scalable-api-operator", "charts/scalable-api-operator"}
BEGIN, END = "<!-- after-a-release -->", "<!-- /after-a-release -->"
DEV_POSTGRES = "examples/postgres-dev.yaml"

problems = []


def problem(path, lineno, msg):
    problems.append(f"{path}:{lineno}: {msg}")


# --- examples ------------------------------------------------------------------------------
def load_examples(examples_dir):
    apis = {}  # "examples/x.yaml" -> dict
    dev = {"secrets": {}, "services": set(), "statefulsets": set(), "db": None, "user": None}
    for f in sorted(glob.glob(os.path.join(examples_dir, "*.yaml"))):
        rel = "examples/" + os.path.basename(f)
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        for d in docs:
            kind = d.get("kind")
            meta = d.get("metadata", {})
            if rel == DEV_POSTGRES:
                if kind == "Secret":
                    keys = set((d.get("stringData") or {}).keys()) | set((d.get("data") or {}).keys())
                    dev["secrets"][meta["name"]] = keys
                elif kind == "Service":
                    dev["services"].add(meta["name"])
                elif kind == "StatefulSet":
                    dev["statefulsets"].add(meta["name"])
                    for c in d["spec"]["template"]["spec"]["containers"]:
                        for e in c.get("env", []):
                            if e["name"] == "POSTGRES_DB":
                                dev["db"] = e.get("value")
                            if e["name"] == "POSTGRES_USER":
                                dev["user"] = e.get("value")
            elif kind == "ScalableApi" and not os.path.basename(f).startswith("invalid-"):
                db = d.get("spec", {}).get("database", {})
                ref = db.get("passwordSecretRef") or db.get("uriSecretRef") or {}
                apis[rel] = {
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "host": db.get("host"),
                    "db": db.get("name"),
                    "user": db.get("user"),
                    "secret": (ref.get("name"), ref.get("key")),
                }
    for rel, a in apis.items():
        a["dev"] = a["host"] in dev["services"]
        if not a["dev"]:
            continue
        name, key = a["secret"]
        if name not in dev["secrets"] or key not in dev["secrets"][name]:
            problem(rel, 0, f"database host {a['host']} is the dev Postgres, but Secret {name}/{key} is not in {DEV_POSTGRES}")
        if (a["db"], a["user"]) != (dev["db"], dev["user"]):
            problem(rel, 0, f"database {a['db']}/user {a['user']} != {DEV_POSTGRES}'s POSTGRES_DB/USER {dev['db']}/{dev['user']}")
    return apis, dev


# --- docs ----------------------------------------------------------------------------------
PUBLISHED = [
    (re.compile(r"oci://"), "an OCI chart (oci://)"),
    (re.compile(r"raw\.githubusercontent\.com"), "a raw.githubusercontent.com URL"),
    (re.compile(r"\bhelm\s+repo\s+add\b"), "a chart repository (helm repo add)"),
    (re.compile(r"\bhelm\s+pull\b"), "a published chart (helm pull)"),
    (re.compile(r"\b(?:kubectl|helm)\b[^`]*\bhttps?://"), "a kubectl/helm command with a URL"),
    (re.compile(r"(?:\bpull\b|--image[= ]|\bkubectl\s+run\b|repository=)[^`]*ghcr\.io|ghcr\.io[^`]*\bpull\b"),
     "a pull of a ghcr.io image"),
]
HELM_CHART = re.compile(r"\bhelm\s+(?:upgrade\s+--install|install|upgrade)\s+([^\s`\\-][^\s`\\]*)\s+([^\s`\\]+)")
NS = re.compile(r"(?:\s-n\s+|\s--namespace[= ])([^\s`]+)")
SECRET = re.compile(r"\bcreate\s+secret\s+generic\s+([^\s`]+)[^`]*?--from-literal=['\"]?([^=\s'\"]+)=")
APPLY = re.compile(r"\b(?:apply|create)\b[^`]*?\s-f\s")
# Each -f of an apply: a file of examples/, or a URL ending in /examples/<file> (also refused
# as a published source above, but still held to the names).
APPLY_FILE = re.compile(r"\s-f\s+(?:\S*/)?(examples/[^\s`/]+)")
STS = re.compile(r"\brollout\s+status\s+(?:statefulset|sts)/([^\s`]+)")
WAIT = re.compile(r"\bwait\b[^`]*--for=condition=Ready\b[^`]*\b(?:sapi|scalableapi|scalableapis(?:\.scalable\.dev)?)/([^\s`]+)")


def namespace(line):
    m = NS.search(" " + line)
    return m.group(1) if m else ""


def check_doc(path, apis, dev):
    with open(path) as fh:
        lines = fh.read().split("\n")
    markdown = path.endswith(".md") or path.endswith(".gotmpl")
    in_release = False
    release_text = ""
    release_start = 0
    in_code = not markdown  # NOTES.txt: the whole file is one block
    applied = {}  # namespace -> list of example files applied in the current block
    created = []  # Secrets created by hand in the current block
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if s == BEGIN:
            in_release, release_text, release_start = True, "", i
            continue
        if s == END:
            if not in_release:
                problem(path, i, f"{END} without {BEGIN}")
            elif "after a release" not in release_text.lower():
                problem(path, release_start, "an after-a-release block must say 'after a release' in its text")
            in_release = False
            continue
        if in_release:
            release_text += " " + line
            continue
        if markdown and s.startswith("```"):
            check_secrets_used(path, created, applied, apis)
            in_code = not in_code
            applied, created = {}, []
            continue
        for rx, what in PUBLISHED:
            if rx.search(line):
                problem(path, i, f"names {what}, which does not exist until a release (outside an {BEGIN} block): {s}")
        m = HELM_CHART.search(line)
        if m and m.group(2) not in CHART_SOURCES and not m.group(2).startswith("-"):
            problem(path, i, f"helm installs chart '{m.group(2)}': only {sorted(CHART_SOURCES)[0]} exists: {s}")
        ns = namespace(line)
        m = SECRET.search(line)
        if m:
            name, key = m.group(1), m.group(2)
            refs = {a["secret"] for a in apis.values()}
            if (name, key) not in refs:
                problem(path, i, f"creates Secret {name} (key {key}), which no example in examples/ references: {s}")
            elif in_code:
                created.append((i, ns, name, key, s))
        m = STS.search(line)
        if m and m.group(1) not in dev["statefulsets"]:
            problem(path, i, f"waits for StatefulSet {m.group(1)}, not the one in {DEV_POSTGRES} ({', '.join(sorted(dev['statefulsets']))})")
        if APPLY.search(line):
            for f in APPLY_FILE.findall(line):
                if not os.path.exists(f):
                    problem(path, i, f"applies {f}, which does not exist")
                elif in_code:
                    applied.setdefault(ns, []).append(f)
        m = WAIT.search(line)
        if m:
            name = m.group(1)
            by_name = [rel for rel, a in apis.items() if a["name"] == name]
            if not by_name:
                problem(path, i, f"waits for ScalableApi {name}, which is no example in examples/: {s}")
            elif in_code:
                here = applied.get(ns, [])
                mine = [rel for rel in by_name if rel in here]
                if not mine:
                    problem(path, i, f"waits for ScalableApi {name} in namespace '{ns}' without applying "
                                     f"{' or '.join(by_name)} there first in the same block: {s}")
                else:
                    rel = mine[-1]
                    if apis[rel]["dev"] and (DEV_POSTGRES not in here or here.index(DEV_POSTGRES) > here.index(rel)):
                        problem(path, i, f"{rel} uses the dev Postgres, but {DEV_POSTGRES} is not applied in "
                                         f"namespace '{ns}' before it in the same block: it would never be Ready")
    check_secrets_used(path, created, applied, apis)
    if in_release:
        problem(path, release_start, f"{BEGIN} is never closed")


def check_secrets_used(path, created, applied, apis):
    """A Secret created by hand in a block that applies examples is one of them references."""
    for lineno, ns, name, key, text in created:
        here = applied.get(ns, [])
        if here and not any(apis.get(f, {}).get("secret") == (name, key) for f in here):
            problem(path, lineno, f"creates Secret {name} (key {key}) in namespace '{ns}', but the examples "
                                  f"applied there in the same block ({', '.join(here)}) do not use it: {text}")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    apis, dev = load_examples(sys.argv[1])
    if not dev["statefulsets"] or not dev["services"]:
        problem(DEV_POSTGRES, 0, "no Service or StatefulSet found")
    for path in sys.argv[2:]:
        check_doc(path, apis, dev)
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
