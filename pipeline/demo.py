"""`scripts/demo`: start the service, speak the sample paragraph to a WAV, print the metrics and the page's address.

With ``--keep`` the service stays up after that (Ctrl-C stops it), so the page
at the printed address can be opened in a browser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from pathlib import Path

from pipeline.processes.service_process import ServiceProcess

from .cli import write_wav
from .client import Client

SAMPLE = ("The otherworldly light spilled over us, cold and silver, and for a moment nobody spoke. "
          "Then the old woman raised her lantern and whispered: do you see it?")


async def _speak(endpoint: str, text: str, profile: str) -> tuple[bytes, int, dict]:
    async with Client(endpoint, timeout_s=120) as client:
        utt = client.speak(text, profile=profile)
        pcm = await utt.collect()
        metrics = {**(utt.metrics or {}), "client_ttfa_ms": round(utt.client_ttfa_ms or 0, 3)}
        return pcm, utt.accepted.sample_rate, metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo")
    ap.add_argument("--out", type=Path, default=Path("out/demo.wav"))
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--text", default=SAMPLE)
    ap.add_argument("--engine", default=None, choices=("auto", "piper", "xtts", "null"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the service (and its page) up until Ctrl-C")
    ap.add_argument("--http", default="127.0.0.1:0", help="the gateway's HOST:PORT (default: a free loopback port)")
    args = ap.parse_args(argv)
    serve_args = [*(["--engine", args.engine] if args.engine else []),
                  *(["--checkpoint", args.checkpoint] if args.checkpoint else []), "--http", args.http]
    print("starting the service ...", file=sys.stderr, flush=True)
    with ServiceProcess(*serve_args) as svc:
        pcm, rate, metrics = asyncio.run(_speak(svc.endpoint, args.text, args.profile))
        write_wav(args.out, pcm, rate)
        metrics["out"] = str(args.out)
        print(json.dumps(metrics, sort_keys=True))
        print(f"wrote {args.out}: {metrics.get('audio_s')} s of audio from the {metrics.get('engine')} engine; "
              f"time to first audio {metrics.get('ttfa_ms')} ms (client saw {metrics.get('client_ttfa_ms')} ms)",
              file=sys.stderr)
        if svc.http_url:
            print(f"page: {svc.http_url}/  (OpenAI-style API at {svc.http_url}/v1, metrics at {svc.http_url}/metrics)"
                  + ("" if args.keep else "; run scripts/demo --keep to keep it open"), file=sys.stderr, flush=True)
        if args.keep:
            print("serving until Ctrl-C ...", file=sys.stderr, flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
