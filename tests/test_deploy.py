"""The deployment recipe (deploy/, docs/deploy.md): schema-valid manifests that agree with the images,
the CLI, the gateway and the settings; Secret layouts that make a working CURVE connection; and the
coordinator pod's command running with nothing but the slim image's packages."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import zmq
import zmq.asyncio
from packaging.requirements import Requirement

import deploy_pods as pods
import deploy_support as ds
from pipeline import cli
from pipeline.settings import load_settings, tomllib
from pipeline.wire.security import apply_server_security, client_keys, generate_keys, is_local_endpoint

# The oldest Kubernetes the recipe claims, and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", "1.37")


def _applied() -> list[dict]:
    return ds.applied()


def _settings():
    return load_settings(ds.K8S / "config.toml", env={})


# -- schema --------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version):
    docs = _applied() + ds.load_yaml_docs(ds.K8S / ds.SECRETS_TEMPLATE)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Secret", "Service", "Deployment",
                                         "PersistentVolumeClaim", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("breakage", ["string_replicas", "unknown_field", "probe_without_handler"])
def test_the_validator_refuses_a_broken_deployment(breakage):
    """The schema check above can fail: the same call refuses each of these mistakes."""
    broken = copy.deepcopy(ds.coordinator())
    spec = ds.pod_spec(broken)["containers"][0]
    if breakage == "string_replicas":
        broken["spec"]["replicas"] = "one"
    elif breakage == "unknown_field":
        spec["readinesProbe"] = spec.pop("readinessProbe")
    else:
        spec["livenessProbe"].pop("httpGet")
        spec["livenessProbe"]["httpGet"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_but_the_secrets_template():
    k = ds.kustomization()
    manifests = {p.name for p in ds.K8S.glob("*.yaml")} - {"kustomization.yaml", ds.SECRETS_TEMPLATE}
    assert set(k["resources"]) == manifests
    images = {i["name"] for i in k["images"]}
    used = {ds.image_name(c) for d in _applied() if d["kind"] == "Deployment"
            for c in ds.pod_spec(d)["containers"] + ds.pod_spec(d).get("initContainers", [])}
    assert used == images == set(ds.IMAGES)
    for doc in _applied():
        if doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- images --------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", sorted(ds.IMAGES.values()), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), "--no-color", "-f", "json", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout + out.stderr


@pytest.mark.parametrize("image", sorted(ds.IMAGES))
def test_image_runs_as_the_numeric_non_root_user_its_pods_require(image):
    stage = ds.final_stage(ds.IMAGES[image])
    user, _, group = ds.instruction(stage, "USER").partition(":")
    assert user.isdigit() and int(user) != 0, "a named user cannot be checked against runAsNonRoot"
    for deployment in (d for d in _applied() if d["kind"] == "Deployment"):
        pod = ds.pod_spec(deployment)
        for ctr in pod["containers"] + pod.get("initContainers", []):
            if ds.image_name(ctr) != image:
                continue
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == int(user)
            assert pod["securityContext"]["runAsGroup"] == int(group or user)
            sc = ctr["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]


def _parse_cli(argv: list[str], monkeypatch) -> tuple[str, object]:
    """Parse ``argv`` with the real `xtts-stream` parser; the chosen command is recorded, not run."""
    seen = {}
    for name in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, name, lambda args, name=name: seen.update(command=name, args=args) or 0)
    assert cli.main(argv) == 0
    return seen["command"], seen["args"]


def test_containers_run_xtts_stream_commands_the_cli_accepts(monkeypatch):
    commands = {}
    for deployment in (ds.coordinator(), ds.workers()):
        ctr = ds.pod_spec(deployment)["containers"][0]
        assert "command" not in ctr, "the image's ENTRYPOINT (tini, then xtts-stream) must stay"
        argv = pods.command_line(ctr)
        assert argv[0] == "xtts-stream"
        name, args = _parse_cli(argv[1:], monkeypatch)
        commands[name] = args
        assert args.config == pods.CONFIG_PATH
    assert set(commands) == {"serve", "worker"}
    assert commands["serve"].workers == 0
    assert commands["worker"].connect == "tcp://xtts-stream-workers:5556"
    worker = ds.pod_spec(ds.workers())["containers"][0]
    assert commands["worker"].ready_file in {p["exec"]["command"][-1] for p in
                                             (worker["startupProbe"], worker["readinessProbe"])}
    for image, dockerfile in ds.IMAGES.items():  # the bare image's default command too
        entry = ds.exec_form(ds.instruction(ds.final_stage(dockerfile), "ENTRYPOINT"))
        assert entry[2] == "xtts-stream" and entry[3] in cli.COMMANDS


def test_exposed_ports_are_the_container_ports_the_services_and_the_config_use():
    settings = _settings().service
    coordinator = ds.pod_spec(ds.coordinator())["containers"][0]
    named = {p["name"]: p["containerPort"] for p in coordinator["ports"]}
    assert ds.exposed_ports(ds.final_stage(ds.IMAGES["xtts-stream-slim"])) == set(named.values())
    assert named == {"zmq-clients": urlsplit(settings.client_endpoint).port,
                     "zmq-workers": urlsplit(settings.worker_endpoint).port,
                     "http": int(settings.http_listen.rpartition(":")[2])}
    clients = ds.find(_applied(), "Service", "xtts-stream")
    workers = ds.find(_applied(), "Service", "xtts-stream-workers")
    assert {(p["port"], named[p["targetPort"]]) for p in clients["spec"]["ports"]} == \
        {(named["zmq-clients"],) * 2, (named["http"],) * 2}
    assert [(p["port"], named[p["targetPort"]]) for p in workers["spec"]["ports"]] == [(named["zmq-workers"],) * 2]
    # A coordinator is ready only once a worker serves it: the workers' Service must publish it before.
    assert workers["spec"]["publishNotReadyAddresses"] is True
    pod_labels = ds.coordinator()["spec"]["template"]["metadata"]["labels"]
    for service in (clients, workers):
        assert service["spec"]["selector"].items() <= pod_labels.items()
    assert ds.exposed_ports(ds.final_stage(ds.IMAGES["xtts-stream-gpu"])) == set()
    assert "ports" not in ds.pod_spec(ds.workers())["containers"][0]


def test_probes_use_the_gateway_port_and_paths():
    coordinator = ds.pod_spec(ds.coordinator())["containers"][0]
    probes = {kind: coordinator[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {"http"}
    assert probes["livenessProbe"]["path"] == "/health" and probes["readinessProbe"]["path"] == "/ready"


def test_grace_period_covers_the_prestop_the_drain_and_the_stop():
    svc = _settings().service
    step = 2 * svc.stop_grace_s  # a polite request, then SIGTERM, each given stop_grace_s
    coordinator = ds.pod_spec(ds.coordinator())
    pre_stop = coordinator["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The coordinator drains, then the supervisor stops the coordinator, the gateway and the sink.
    assert coordinator["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + svc.drain_timeout_s + 3 * step
    assert ds.pod_spec(ds.workers())["terminationGracePeriodSeconds"] >= svc.drain_timeout_s + step
    assert ds.coordinator()["spec"]["strategy"]["type"] == "Recreate"


def test_every_container_states_its_resources():
    for deployment in (ds.coordinator(), ds.workers()):
        pod = ds.pod_spec(deployment)
        for ctr in pod["containers"] + pod.get("initContainers", []):
            res = ctr["resources"]
            assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"], ctr["name"]
    worker = ds.pod_spec(ds.workers())["containers"][0]["resources"]
    assert worker["limits"]["nvidia.com/gpu"] == worker["requests"]["nvidia.com/gpu"] == 1


# -- config, keys and volumes --------------------------------------------------

def test_the_config_loads_and_binds_beyond_loopback_only_with_mounted_keys():
    settings = _settings().service
    cm = ds.find(_applied(), "ConfigMap", "xtts-stream-config")
    assert tomllib.loads(cm["data"]["config.toml"])  # what the pods read is this file
    coordinator = ds.coordinator()
    ctr = ds.pod_spec(coordinator)["containers"][0]
    assert ds.volume_at(coordinator, ctr, pods.CONFIG_PATH)[0]["configMap"]["name"] == "xtts-stream-config"
    for endpoint in (settings.client_endpoint, settings.worker_endpoint):
        if is_local_endpoint(endpoint):
            continue
        assert settings.curve_keys_dir, f"{endpoint} binds beyond loopback without CURVE keys"
        keys_volume, _ = ds.volume_at(coordinator, ctr, settings.curve_keys_dir)
        init = ds.container(coordinator, "curve-keys", init=True)
        env = {e["name"]: e["value"] for e in init["env"]}
        assert ds.volume_at(coordinator, init, env["DST"])[0] is keys_volume  # the init container fills it
        assert ds.volume_at(coordinator, init, env["SRC"])[0]["secret"]["secretName"] == "xtts-stream-curve"
    host = settings.http_listen.rpartition(":")[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        volume, mount = ds.volume_at(coordinator, ctr, settings.http_api_keys_file)
        key = settings.http_api_keys_file[len(mount["mountPath"]):].strip("/")
        assert volume["secret"]["secretName"] == "xtts-stream-http-keys"
        assert key in {item["path"] for item in volume["secret"]["items"]}


def test_models_and_voices_are_the_same_volume_at_the_same_path_in_both_pods():
    settings = _settings().service
    workers, coordinator = ds.workers(), ds.coordinator()
    worker_ctr = ds.pod_spec(workers)["containers"][0]
    claim = ds.volume_at(workers, worker_ctr, settings.checkpoint)[0]["persistentVolumeClaim"]
    assert ds.find(_applied(), "PersistentVolumeClaim", claim["claimName"])
    # The coordinator checks a voice file, the worker reads it: the same file at the same path.
    volume, mount = ds.volume_at(coordinator, ds.pod_spec(coordinator)["containers"][0], settings.voices_dir)
    assert volume["persistentVolumeClaim"]["claimName"] == claim["claimName"]
    worker_mount = ds.volume_at(workers, worker_ctr, settings.voices_dir)[1]
    inside_claim = Path(mount.get("subPath", "")) / Path(settings.voices_dir).relative_to(mount["mountPath"])
    assert inside_claim == Path(settings.voices_dir).relative_to(worker_mount["mountPath"])


def test_the_secret_layouts_make_a_working_curve_connection(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, clients=3)
    coordinator_keys = pods.build_coordinator_keys(keys, tmp_path / "coordinator")
    worker_keys = pods.build_worker_keys(keys, tmp_path / "worker")
    assert {p.name for p in (coordinator_keys / "clients").iterdir()} == {"client-1.key", "client-2.key",
                                                                          "client-3.key"}
    assert all(p.stat().st_mode & 0o077 == 0 for p in coordinator_keys.rglob("*") if p.is_file())
    assert not list(worker_keys.glob("server.key_secret")), "a worker never holds the server's secret key"
    worker_args = ds.pod_spec(ds.workers())["containers"][0]["args"]
    worker_key_name = worker_args[worker_args.index("--key-name") + 1]
    asyncio.run(_curve_round_trip(f"ipc://{tmp_path}/curve.sock", coordinator_keys,
                                  [client_keys(str(worker_keys), worker_key_name),  # a GPU worker
                                   client_keys(str(coordinator_keys))]))  # the gateway, inside the pod


async def _curve_round_trip(endpoint: str, server_dir: Path, clients: list) -> None:
    ctx = zmq.asyncio.Context()
    server = ctx.socket(zmq.ROUTER)
    auth = apply_server_security(server, endpoint, str(server_dir))
    try:
        server.bind(endpoint)
        for server_key, (public, secret) in clients:
            client = ctx.socket(zmq.DEALER)
            client.curve_serverkey, client.curve_publickey, client.curve_secretkey = server_key, public, secret
            client.connect(endpoint)
            await client.send(b"hello")
            identity, body = await asyncio.wait_for(server.recv_multipart(), 10)
            await server.send_multipart([identity, b"welcome"])
            assert body == b"hello" and await asyncio.wait_for(client.recv(), 10) == b"welcome"
            client.close(linger=0)
    finally:
        server.close(linger=0)
        auth.stop()
        ctx.term()


def test_docs_create_every_secret_the_pods_mount():
    docs = (ds.ROOT / "docs" / "deploy.md").read_text()
    created = set(re.findall(r"create secret generic ([\w-]+)", docs))
    template = {d["metadata"]["name"] for d in ds.load_yaml_docs(ds.K8S / ds.SECRETS_TEMPLATE)}
    mounted = {v["secret"]["secretName"] for d in (ds.coordinator(), ds.workers())
               for v in ds.pod_spec(d)["volumes"] if "secret" in v}
    assert mounted == template == created
    assert "BEGIN" not in (ds.K8S / ds.SECRETS_TEMPLATE).read_text()  # placeholders, never key material


# -- what goes into the images -------------------------------------------------

def test_dockerignore_admits_what_the_images_copy_and_nothing_heavy():
    for dockerfile in ds.IMAGES.values():
        for source in ds.copy_sources(dockerfile):
            assert (ds.ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert not ds.dockerignored(source), f"{dockerfile.name} copies {source}, which .dockerignore drops"
    for heavy in (".git/HEAD", ".venv/bin/python", "tests/test_deploy.py", "models/x/model.pth", "out/a.wav",
                  "pipeline/__pycache__/cli.cpython-311.pyc"):
        assert ds.dockerignored(heavy), heavy


def test_slim_requirements_are_pyprojects_own_lines_without_the_engines():
    with open(ds.ROOT / "pyproject.toml", "rb") as f:
        project = {str(Requirement(r)) for r in tomllib.load(f)["project"]["dependencies"]}
    slim = {str(r) for r in ds.slim_requirements()}
    assert slim <= project, f"not in pyproject.toml as written there: {slim - project}"
    names = {Requirement(r).name for r in slim}
    assert not names & {"torch", "coqui-tts", "transformers", "piper-tts"}


@pytest.mark.slow
def test_the_coordinator_pod_runs_with_only_the_slim_packages_and_answers_its_probes(tmp_path):
    """The coordinator container's command line, its config and its Secrets laid out as the pod mounts
    them, with nothing importable beyond deploy/requirements-slim.txt; then SIGTERM, as a pod gets."""
    short = Path(tempfile.mkdtemp(prefix="xd-"))  # ipc:// paths must fit in 107 bytes
    try:
        _run_coordinator_pod(tmp_path / "pod", short, tmp_path)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _run_coordinator_pod(root: Path, short: Path, tmp_path: Path) -> None:
    pod = pods.coordinator_pod_files(root, short, tmp_path)
    ctr = ds.pod_spec(ds.coordinator())["containers"][0]
    argv = [str(root) + w if w.startswith("/etc/") else w for w in pods.command_line(ctr)[1:]]
    guard = ds.write_slim_guard(tmp_path / "guard")
    env = {**os.environ, "PYTHONPATH": f"{guard}:{ds.ROOT}", "HOME": str(pod["work"]), "TMPDIR": str(pod["tmp"])}
    log = tmp_path / "coordinator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*ds.python_cli(), *argv], cwd=pod["work"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = pods.gateway_url(proc, pod["endpoint"], pod["keys"], log)
        key = {"Authorization": f"Bearer {pod['api_key']}"}
        probes = {k: ctr[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
        assert pods.http_get(url + probes["livenessProbe"])[0] == 200
        status, body = pods.http_get(url + probes["readinessProbe"])  # no worker has joined: not ready, no key needed
        assert status == 503 and json.loads(body)["ready"] is False, body
        assert pods.http_get(url + "/v1/models")[0] == 401 and pods.http_get(url + "/v1/models", key)[0] == 200
        proc.send_signal(signal.SIGTERM)
        grace = ds.pod_spec(ds.coordinator())["terminationGracePeriodSeconds"]
        assert proc.wait(timeout=grace) == 0, log.read_text()[-3000:]
        assert not pods.kill_group(proc), "the service left processes behind"
    finally:
        pods.kill_group(proc)
