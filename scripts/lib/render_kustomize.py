"""Renders deploy/k8s/kustomization.yaml without kustomize, for offline checks.

Supports exactly the subset Quiver's kustomization uses, and refuses any
other field rather than render something kustomize would not:

  resources           plain files, relative to the kustomization
  labels              pairs added to every object's metadata.labels
                      (includeSelectors and includeTemplates left off)
  configMapGenerator  name with files ([key=]path) and literals (key=value)
  secretGenerator     the same, as stringData-free `data` (base64)
  generatorOptions    disableNameSuffixHash only
  images              name, newName, newTag, digest

Generated names get kustomize's content-hash suffix (sha256 of the object's
JSON, first 10 hex digits with vowel-like digits replaced), and references
to them in pod templates (volumes, envFrom, env valueFrom) are renamed to
match. Files may lie outside the kustomization's directory, as with
`--load-restrictor LoadRestrictionsNone`.

Usage: render_kustomize.py DIR --out OUTDIR
  Writes one YAML file per object into OUTDIR and prints, per object, a line
  "FILE<TAB>SOURCE<TAB>KIND/NAME"; then "used<TAB>PATH" for every resource
  file the kustomization lists. Needs PyYAML.
"""

import argparse
import base64
import hashlib
import json
import os
import sys

import yaml

KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "labels",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "images",
}


class RenderError(Exception):
    pass


def fail_unknown(where, obj, allowed):
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise RenderError(f"{where}: unsupported field(s) {', '.join(extra)}")


def go_json(obj):
    """json.Marshal's output: sorted keys, no spaces, HTML characters escaped."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def name_hash(encoded):
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def generator_data(root, gen, where):
    fail_unknown(where, gen, {"name", "files", "literals"})
    data = {}
    for entry in gen.get("files", []):
        key, _, path = entry.rpartition("=")
        key = key or os.path.basename(path)
        full = os.path.normpath(os.path.join(root, path))
        try:
            with open(full, encoding="utf-8") as f:
                data[key] = f.read()
        except OSError as e:
            raise RenderError(f"{where}: cannot read {path}: {e.strerror}") from e
    for entry in gen.get("literals", []):
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise RenderError(f"{where}: literal {entry!r} is not key=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        data[key] = value
    if not data:
        raise RenderError(f"{where}: generates nothing")
    return dict(sorted(data.items()))


def generate(root, kustomization, hashed):
    objects, renames = [], {}
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for i, gen in enumerate(kustomization.get(field) or []):
            where = f"{field}[{i}]"
            name = gen.get("name")
            if not name:
                raise RenderError(f"{where}: no name")
            data = generator_data(root, gen, where)
            if kind == "ConfigMap":
                obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
                encoded = go_json({"kind": kind, "name": name, "data": data})
            else:
                data = {k: base64.b64encode(v.encode("utf-8")).decode() for k, v in data.items()}
                obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name},
                       "type": "Opaque", "data": data}
                encoded = go_json({"kind": kind, "type": "Opaque", "name": name, "data": data})
            if hashed:
                obj["metadata"]["name"] = f"{name}-{name_hash(encoded)}"
            renames[(kind, name)] = obj["metadata"]["name"]
            objects.append((f"{field} {name}", obj))
    return objects, renames


def pod_specs(obj):
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        yield spec
    elif obj.get("kind") == "CronJob":
        yield from pod_specs({"kind": "Job", "spec": spec.get("jobTemplate", {}).get("spec", {})})
    elif "template" in spec:
        yield spec["template"].get("spec") or {}


def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def rename_references(obj, renames):
    def renamed(kind, name):
        return renames.get((kind, name), name)

    for pod in pod_specs(obj):
        for vol in pod.get("volumes") or []:
            if "configMap" in vol:
                vol["configMap"]["name"] = renamed("ConfigMap", vol["configMap"].get("name"))
            if "secret" in vol:
                vol["secret"]["secretName"] = renamed("Secret", vol["secret"].get("secretName"))
            for src in (vol.get("projected") or {}).get("sources") or []:
                if "configMap" in src:
                    src["configMap"]["name"] = renamed("ConfigMap", src["configMap"].get("name"))
                if "secret" in src:
                    src["secret"]["name"] = renamed("Secret", src["secret"].get("name"))
        for c in containers(pod):
            for ref in c.get("envFrom") or []:
                if "configMapRef" in ref:
                    ref["configMapRef"]["name"] = renamed("ConfigMap", ref["configMapRef"].get("name"))
                if "secretRef" in ref:
                    ref["secretRef"]["name"] = renamed("Secret", ref["secretRef"].get("name"))
            for env in c.get("env") or []:
                src = env.get("valueFrom") or {}
                if "configMapKeyRef" in src:
                    src["configMapKeyRef"]["name"] = renamed("ConfigMap", src["configMapKeyRef"].get("name"))
                if "secretKeyRef" in src:
                    src["secretKeyRef"]["name"] = renamed("Secret", src["secretKeyRef"].get("name"))


def split_image(image):
    """(name, tag, digest) of an image reference; a port is not a tag."""
    name, _, digest = image.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def set_images(obj, images):
    for pod in pod_specs(obj):
        for c in containers(pod):
            name, tag, digest = split_image(c.get("image", ""))
            for rule in images:
                if rule["name"] != name:
                    continue
                name = rule.get("newName", name)
                if "digest" in rule:
                    tag, digest = "", rule["digest"]
                elif "newTag" in rule:
                    tag, digest = str(rule["newTag"]), ""
                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                break


def render(root):
    path = os.path.join(root, "kustomization.yaml")
    with open(path, encoding="utf-8") as f:
        kustomization = yaml.safe_load(f) or {}
    fail_unknown(path, kustomization, KNOWN_KEYS)
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind is not Kustomization")

    options = kustomization.get("generatorOptions") or {}
    fail_unknown("generatorOptions", options, {"disableNameSuffixHash"})
    images = kustomization.get("images") or []
    for i, rule in enumerate(images):
        fail_unknown(f"images[{i}]", rule, {"name", "newName", "newTag", "digest"})
    labels = {}
    for i, entry in enumerate(kustomization.get("labels") or []):
        fail_unknown(f"labels[{i}]", entry, {"pairs", "includeSelectors", "includeTemplates"})
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError(f"labels[{i}]: includeSelectors/includeTemplates are not supported")
        labels.update(entry.get("pairs") or {})

    objects, used = [], []
    for res in kustomization.get("resources") or []:
        file = os.path.normpath(os.path.join(root, res))
        if not os.path.isfile(file):
            raise RenderError(f"resources: {res} is not a file (directories and URLs are not supported)")
        used.append(file)
        with open(file, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    objects.append((file, doc))
    generated, renames = generate(root, kustomization, not options.get("disableNameSuffixHash"))
    objects += generated

    seen = set()
    for source, obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj or "name" not in (obj.get("metadata") or {}):
            raise RenderError(f"{source}: a document without kind or metadata.name")
        key = (obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise RenderError(f"{source}: {key[0]}/{key[1]} is defined twice")
        seen.add(key)
        if labels:
            obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), **labels}
        rename_references(obj, renames)
        set_images(obj, images)
    return objects, used


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        objects, used = render(args.dir)
    except (RenderError, yaml.YAMLError, OSError) as e:
        print(f"render_kustomize: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    for i, (source, obj) in enumerate(objects):
        kind, name = obj["kind"], obj["metadata"]["name"]
        out = os.path.join(args.out, f"{i:02d}-{kind.lower()}-{name}.yaml")
        with open(out, "w", encoding="utf-8") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
        print(f"{out}\t{source}\t{kind}/{name}")
    for file in used:
        print(f"used\t{file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
