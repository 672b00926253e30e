"""Helpers for the hardening tests: services with a config, status polling, raw client sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from pipeline.client import Client, within
from pipeline.processes.service_process import ServiceProcess
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode


def piper_service(directory: Path, config: str, env: dict[str, str] | None = None,
                  endpoint: str | None = None) -> ServiceProcess:
    """A (not yet started) Piper service reading ``config`` as its TOML file."""
    cfg = Path(directory) / "service.toml"
    cfg.write_text(config)
    return ServiceProcess("--engine", "piper", "--config", str(cfg), env=env, endpoint=endpoint)


async def status(endpoint: str, timeout_s: float = 10.0, **curve) -> dict:
    async with Client(endpoint, timeout_s=timeout_s, **curve) as client:
        reply = await client.status(timeout_s)
        return {"healthy": reply.healthy, **reply.state}


async def wait_for(endpoint: str, predicate: Callable[[dict], bool], timeout_s: float = 15.0,
                   poll_s: float = 0.05) -> tuple[dict, float]:
    """Poll status until ``predicate`` holds: (that status, seconds it took)."""
    start = time.monotonic()
    state: dict = {}
    while time.monotonic() - start < timeout_s:
        state = await status(endpoint)
        if predicate(state):
            return state, time.monotonic() - start
        await asyncio.sleep(poll_s)
    raise AssertionError(f"condition not met within {timeout_s} s; last status: {state}")


def processes(state: dict) -> dict[str, tuple[int, int, bool]]:
    """name -> (pid, restarts, given_up), from the supervisor's part of a status."""
    return {name: (proc["pid"], proc["restarts"], proc["given_up"])
            for name, proc in state["supervisor"]["processes"].items()}


def assert_nothing_restarted(before: dict, after: dict) -> None:
    assert processes(after) == processes(before), "a process died or was restarted"
    assert all(restarts == 0 and not given_up for _, restarts, given_up in processes(after).values())


class RawDealer:
    """A bare DEALER socket: sends any frames, reads whatever comes back, can vanish abruptly."""

    def __init__(self, endpoint: str, rcvhwm: int | None = None):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
            self.sock.setsockopt(zmq.RCVBUF, 4096)  # keep the kernel from buffering for it either
        self.sock.connect(endpoint)

    async def send(self, msg: p.Message | list[bytes]) -> None:
        await self.sock.send_multipart(encode(msg) if isinstance(msg, p.Message) else msg, copy=False)

    async def recv(self, timeout_s: float = 30.0) -> p.Message:
        return decode(await within(self.sock.recv_multipart(), timeout_s))

    async def recv_until_done(self, stream: str, timeout_s: float = 60.0) -> list[p.Message]:
        """Every message up to and including the stream's ``done`` or error."""
        out: list[p.Message] = []
        while True:
            msg = await self.recv(timeout_s)
            out.append(msg)
            if isinstance(msg, (p.Done, p.Error)) and msg.stream == stream and getattr(msg, "code", "") != "chunk_failed":
                return out

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
