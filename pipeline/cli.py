"""`xtts-stream`: serve, say, status, wyoming, make-synthetic, keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import wave
from pathlib import Path
from typing import Any

from .settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xtts-stream", description="Low-latency streaming TTS on XTTS-v2")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="start the service (supervisor, coordinator, worker, sink)"))
    _say_args(sub.add_parser("say", help="speak a text through a running service"))
    _worker_args(sub.add_parser("worker", help="run this host's workers for a coordinator on another host"))
    st = sub.add_parser("status", help="ask a running service how it is")
    st.add_argument("--endpoint", default=None)
    st.add_argument("--config", default=None)
    st.add_argument("--keys", default=None, help="CURVE keys directory (from `xtts-stream keys`)")
    from .integrations.wyoming_cli import add_arguments as wyoming_args
    wyoming_args(sub.add_parser("wyoming", help="serve a running service to Home Assistant (Wyoming protocol)"))
    ms = sub.add_parser("make-synthetic", help="write a seeded random XTTS-v2 checkpoint (real layout)")
    ms.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ms.add_argument("--seed", type=int, default=0)
    ms.add_argument("dir", type=Path)
    keys = sub.add_parser("keys", help="generate CURVE keys for serving beyond loopback")
    keys.add_argument("dir", type=Path)
    keys.add_argument("--clients", type=int, default=1, help="how many client key pairs to make")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"xtts-stream: {exc}", file=sys.stderr)
        return 2


# -- serve ---------------------------------------------------------------------

def _serve_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", default=None, help="your TOML file (profiles, service overrides)")
    ap.add_argument("--endpoint", default=None, help="client endpoint, e.g. tcp://127.0.0.1:5555 or ipc:///tmp/x.sock")
    ap.add_argument("--engine", choices=("auto", "piper", "xtts", "null"), default=None)
    ap.add_argument("--checkpoint", default=None, help="XTTS-v2 checkpoint directory")
    ap.add_argument("--xtts-path", choices=("fast", "stock"), default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--forced-tokens-per-char", type=float, default=None,
                    help="benchmarks with random-weight checkpoints only: force N audio tokens per character")
    ap.add_argument("--keys", default=None, help="CURVE keys directory: required for a non-loopback endpoint")
    ap.add_argument("--wyoming", default=None, metavar="URI",
                    help="also serve Home Assistant's Wyoming protocol here, e.g. tcp://127.0.0.1:10200")
    ap.add_argument("--wyoming-allow-remote", action="store_true", default=None,
                    help="let --wyoming listen beyond loopback (Wyoming has no authentication)")
    ap.add_argument("--worker-endpoint", default=None, metavar="ENDPOINT",
                    help="let workers on other hosts join here, e.g. tcp://0.0.0.0:5556 (needs --keys beyond loopback)")
    ap.add_argument("--http", default=None, metavar="HOST:PORT|off",
                    help="the HTTP/WebSocket gateway's address (default 127.0.0.1:8000; port 0 = any free port)")
    ap.add_argument("--http-keys", default=None, metavar="FILE", help="API keys file: required beyond loopback")
    ap.add_argument("--log-level", default="INFO")


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.processes.supervisor import Supervisor
    logging.basicConfig(level=args.log_level, format="%(asctime)s supervisor %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    overrides = {"client_endpoint": args.endpoint, "engine": args.engine, "checkpoint": args.checkpoint,
                 "xtts_path": args.xtts_path, "device": args.device, "dtype": args.dtype, "workers": args.workers,
                 "forced_tokens_per_char": args.forced_tokens_per_char, "curve_keys_dir": args.keys,
                 "wyoming_uri": args.wyoming, "wyoming_allow_remote": args.wyoming_allow_remote,
                 "http_listen": "" if args.http == "off" else args.http, "http_api_keys_file": args.http_keys,
                 "worker_endpoint": args.worker_endpoint}
    settings = settings.with_service(**{k: v for k, v in overrides.items() if v is not None})
    check_front_ends(settings)
    sup = Supervisor(settings, log_level=args.log_level)
    print(f"xtts-stream: starting on {settings.service.client_endpoint} (run dir {sup.run.root})", flush=True)
    sup.serve_forever()
    return 0 if sup.healthy else 1


def check_front_ends(settings) -> None:
    """Every listening address is refused before anything starts when it would be open without keys."""
    from pipeline.wire.security import check_bind_allowed
    svc = settings.service
    check_bind_allowed(svc.client_endpoint, svc.curve_keys_dir)
    if svc.worker_endpoint:
        check_bind_allowed(svc.worker_endpoint, svc.curve_keys_dir)
    if svc.http_listen:
        from .gateway.auth import check_listen_allowed, parse_listen
        check_listen_allowed(parse_listen(svc.http_listen)[0], svc.http_api_keys_file)
    if svc.wyoming_uri:
        from .integrations.wyoming_cli import check_uri, require_wyoming
        check_uri(svc.wyoming_uri, svc.wyoming_allow_remote)
        require_wyoming()


# -- worker (on another host) --------------------------------------------------

def _worker_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--connect", required=True, metavar="ENDPOINT",
                    help="the coordinator's worker endpoint, e.g. tcp://coordinator:5556")
    ap.add_argument("--keys", default=None, help="CURVE keys directory: required beyond loopback")
    ap.add_argument("--key-name", default="client-1", help="this worker's key pair in --keys (default client-1)")
    ap.add_argument("--name", default=None, help="the worker's name (default: this host's name)")
    ap.add_argument("--ready-file", default="", help="a file that exists while the worker is connected and serving")
    ap.add_argument("--config", default=None)
    ap.add_argument("--engine", choices=("auto", "piper", "xtts", "null"), default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--xtts-path", choices=("fast", "stock"), default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--log-level", default="INFO")


def cmd_worker(args: argparse.Namespace) -> int:
    """This host's workers of a coordinator elsewhere, restarted when they die; SIGTERM drains them."""
    import socket

    from pipeline.processes.plan import remote_worker_processes
    from pipeline.processes.supervisor import Supervisor
    from pipeline.wire.security import is_local_endpoint
    logging.basicConfig(level=args.log_level, format="%(asctime)s worker-host %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    overrides = {"engine": args.engine, "checkpoint": args.checkpoint, "xtts_path": args.xtts_path,
                 "device": args.device, "dtype": args.dtype}
    settings = settings.with_service(**{k: v for k, v in overrides.items() if v is not None})
    if not args.keys and not is_local_endpoint(args.connect):
        raise SettingsError(f"refusing to connect to {args.connect} without CURVE keys: a coordinator beyond "
                            f"loopback admits only workers with a key pair (--keys DIR, from `xtts-stream keys`)")
    if args.keys:
        from pipeline.wire.security import client_keys
        client_keys(args.keys, args.key_name)  # a missing pair fails here, not in every restart
    name = args.name or socket.gethostname().split(".")[0]

    def plan(run):
        return remote_worker_processes(settings.service, run, args.connect, args.keys or "", args.key_name, name,
                                       args.ready_file)
    sup = Supervisor(settings, log_level=args.log_level, plan=plan)
    print(f"xtts-stream: worker {name} joining {args.connect} (run dir {sup.run.root})", flush=True)
    sup.serve_forever()
    return 0 if sup.healthy else 1


# -- say -----------------------------------------------------------------------

def _say_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("text", nargs="?", default=None)
    ap.add_argument("--stdin", action="store_true", help="stream standard input as text deltas")
    ap.add_argument("--profile", default="")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a profile field")
    ap.add_argument("--language", default="")
    ap.add_argument("--voice", default="")
    ap.add_argument("--out", type=Path, default=None, help="write the audio to this WAV file")
    ap.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    ap.add_argument("--endpoint", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--keys", default=None, help="CURVE keys directory (from `xtts-stream keys`)")


def cmd_say(args: argparse.Namespace) -> int:
    if (args.text is None) == (not args.stdin):
        print("xtts-stream say: give a TEXT or --stdin (not both)", file=sys.stderr)
        return 2
    endpoint = args.endpoint or load_settings(args.config).service.client_endpoint
    from .client import ServiceError
    try:
        metrics = asyncio.run(_say(args, endpoint, _parse_overrides(args.set)))
    except ServiceError as exc:
        print(f"xtts-stream say: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(f"spoke {metrics.get('audio_s')} s of audio; first audio after {metrics.get('ttfa_ms')} ms "
              f"(played after {metrics.get('played_ttfa_ms')} ms); rtf {metrics.get('rtf')}")
    return 0


async def _say(args: argparse.Namespace, endpoint: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from .client import Client
    async with Client(endpoint, timeout_s=args.timeout, **_curve(args.keys)) as client:
        await client.wait_ready(args.timeout)
        kwargs = dict(profile=args.profile, overrides=overrides, language=args.language, voice=args.voice)
        if args.stdin:
            utt = client.open_stream(**kwargs)
            feeder = asyncio.create_task(_feed_stdin(utt))
        else:
            utt = client.speak(args.text, **kwargs)
            feeder = None
        pcm = bytearray()
        try:
            async for block in utt:
                pcm += block.pcm
                if feeder and feeder.done() and feeder.exception():
                    raise feeder.exception()
        finally:
            if feeder:
                feeder.cancel()
    rate = utt.accepted.sample_rate if utt.accepted else 0
    if args.out:
        write_wav(args.out, bytes(pcm), rate)
    return {**(utt.metrics or {}), "client_ttfa_ms": round(utt.client_ttfa_ms or 0, 3), "sample_rate": rate,
            **({"out": str(args.out)} if args.out else {})}


async def _feed_stdin(utt) -> None:
    # A thread reads, so a pipe, a terminal and a redirected file all work.
    pending = b""
    while chunk := await asyncio.to_thread(sys.stdin.buffer.read1, 256):
        pending += chunk
        text = pending.decode("utf-8", errors="ignore")
        pending = pending[len(text.encode("utf-8")):]  # keep a split multi-byte character for later
        if text:
            await utt.send(text)
    await utt.end()


def _curve(keys_dir: str | None) -> dict[str, Any]:
    if not keys_dir:
        return {}
    from pipeline.wire.security import client_keys
    server_key, pair = client_keys(keys_dir)
    return {"curve_server_key": server_key, "curve_client_keys": pair}


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SettingsError(f"--set takes FIELD=VALUE, got '{item}'")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


# -- the rest ------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from .client import ServiceError, SyncClient
    endpoint = args.endpoint or load_settings(args.config).service.client_endpoint
    client = SyncClient(endpoint, timeout_s=5.0, **_curve(args.keys))
    try:
        reply = client.status()
    except ServiceError as exc:
        print(f"xtts-stream status: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps({"healthy": reply.healthy, **reply.state}, indent=2, sort_keys=True))
    return 0 if reply.healthy else 1


def cmd_wyoming(args: argparse.Namespace) -> int:
    from .integrations.wyoming_cli import run
    return run(args)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from workers.engines.synthetic import make_synthetic_checkpoint
    out = make_synthetic_checkpoint(args.dir, size=args.size, seed=args.seed)
    print(f"wrote a {args.size} synthetic XTTS-v2 checkpoint to {out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pipeline.wire.security import generate_keys
    for line in generate_keys(args.dir, args.clients):
        print(line)
    return 0


COMMANDS = {"serve": cmd_serve, "say": cmd_say, "worker": cmd_worker, "status": cmd_status, "wyoming": cmd_wyoming,
            "make-synthetic": cmd_make_synthetic, "keys": cmd_keys}

if __name__ == "__main__":
    raise SystemExit(main())
