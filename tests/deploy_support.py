"""Reading the deployment recipe (deploy/): the manifests as kustomize applies them, the images'
final stages, .dockerignore's rules, and an import guard that leaves only the slim image's packages."""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRETS_TEMPLATE = "secrets.template.yaml"
# Which Dockerfile builds which image the manifests name (docs/deploy.md tags them so).
IMAGES = {"xtts-stream-slim": DEPLOY / "Dockerfile.slim", "xtts-stream-gpu": DEPLOY / "Dockerfile.gpu"}


# -- manifests -----------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated_configmaps() -> list[dict]:
    """The ConfigMaps kustomize's configMapGenerator makes (before it appends the content hash)."""
    out = []
    for gen in kustomization().get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in gen.get("files", [])}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def applied() -> list[dict]:
    """Everything `kubectl apply -k deploy/k8s` creates."""
    docs = [doc for name in kustomization()["resources"] for doc in load_yaml_docs(K8S / name)]
    return docs + generated_configmaps()


def coordinator() -> dict:
    return find(applied(), "Deployment", "xtts-stream-coordinator")


def workers() -> dict:
    return find(applied(), "Deployment", "xtts-stream-workers")


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec(deployment).get(key, []) if c["name"] == name)


def volume_at(deployment: dict, ctr: dict, path: str) -> tuple[dict, dict]:
    """(volume, volumeMount) of the mount that holds ``path`` in ``ctr`` (the deepest one)."""
    mounts = [m for m in ctr.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} lies on no volume of container {ctr['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    return volume, mount


def image_name(ctr: dict) -> str:
    return ctr["image"].rsplit(":", 1)[0]


# -- Dockerfiles ---------------------------------------------------------------

def parse_dockerfile(path: Path) -> list[dict]:
    """Every instruction, continuation lines joined (the parser takes a file named Dockerfile, or bytes)."""
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()), env_replace=False).structure


def final_stage(path: Path) -> list[dict]:
    """The instructions after the last FROM: what the image is made of."""
    structure = parse_dockerfile(path)
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    return structure[last_from + 1:]


def instruction(stage: list[dict], name: str) -> str | None:
    values = [ins["value"] for ins in stage if ins["instruction"] == name]
    return values[-1] if values else None


def exec_form(value: str | None) -> list[str]:
    if value is None:
        return []
    value = value.strip()
    return json.loads(value) if value.startswith("[") else ["sh", "-c", value]


def exposed_ports(stage: list[dict]) -> set[int]:
    return {int(p.split("/")[0]) for ins in stage if ins["instruction"] == "EXPOSE" for p in ins["value"].split()}


def copy_sources(path: Path) -> list[str]:
    """What each COPY takes from the build context (not from another stage)."""
    out = []
    for ins in parse_dockerfile(path):
        if ins["instruction"] != "COPY":
            continue
        words = shlex.split(ins["value"])
        if any(w.startswith("--from") for w in words):
            continue
        out += [w for w in words if not w.startswith("--")][:-1]
    return out


def dockerignored(rel_path: str, ignore_file: Path = ROOT / ".dockerignore") -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = rel_path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _glob_regex(line.lstrip("!").strip("/"))
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _glob_regex(glob: str) -> re.Pattern:
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            ch = glob[i]
            out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
    return re.compile(out)


# -- the slim image's packages -------------------------------------------------

def slim_requirements() -> list[Requirement]:
    lines = (DEPLOY / "requirements-slim.txt").read_text().splitlines()
    return [Requirement(line) for line in (ln.strip() for ln in lines) if line and not line.startswith("#")]


def distribution_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions pip installs for ``requirements`` here (markers evaluated, extras left out)."""
    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate()]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep)
    return seen


def importable_in_slim_image() -> set[str]:
    dists = distribution_closure(slim_requirements())
    tops = {top for top, owners in metadata.packages_distributions().items()
            if any(canonicalize_name(d) in dists for d in owners)}
    return tops | {"pipeline", "workers"}


GUARD = '''\
"""Written by tests/test_deploy.py: only what the slim image installs can be imported."""
import sys

ALLOWED = set({allowed!r})


class NotInSlimImage:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top in sys.stdlib_module_names or top in sys.builtin_module_names:
            return None
        if not any(f.find_spec(name, path) for f in sys.meta_path if f is not self and hasattr(f, "find_spec")):
            return None  # not installed here either: missing in the image as it is here
        print(f"slim image: refused to import {{name}}, installed here but not in the image",
              file=sys.stderr, flush=True)
        raise ModuleNotFoundError(f"{{top}} is not in the slim image (deploy/requirements-slim.txt)", name=name)


sys.meta_path.insert(0, NotInSlimImage())
'''


def write_slim_guard(directory: Path) -> Path:
    """A sitecustomize that every Python process started with ``directory`` on PYTHONPATH runs first."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(GUARD.format(allowed=sorted(importable_in_slim_image())))
    return directory


def python_cli() -> list[str]:
    """`xtts-stream` as the image runs it, with this interpreter and checkout."""
    return [sys.executable, "-m", "pipeline.cli"]
