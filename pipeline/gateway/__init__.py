"""The HTTP and WebSocket gateway: OpenAI-style speech, text-delta streaming, health and metrics.

Its own process (``python -m pipeline.gateway``), started by the supervisor. It
is a ZeroMQ client of the coordinator like any other (through
`pipeline.client`), so a request through it takes the same path as one from a
ZeroMQ client, plus the gateway's own socket. Imports neither torch nor coqui-tts.
See docs/http.md.
"""

from pathlib import Path

ADDR_FILE = "http.addr"  # in the run directory: the gateway's URL once it listens


def read_url(run_dir: Path) -> str:
    """The URL the gateway of this run directory listens on, "" until it does."""
    try:
        return (Path(run_dir) / ADDR_FILE).read_text().strip()
    except OSError:
        return ""
