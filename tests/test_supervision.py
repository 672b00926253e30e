"""Death, hangs and restarts: the service keeps its promises when its own processes fail.

Every test runs its own service (real processes, ipc:// sockets) with faults
injected on purpose, and measures what the issue asks: detection within 1 s,
recovery within 2 s plus the engine's load time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from pipeline.client import Client, ServiceError
from pipeline.processes.service_process import ServiceProcess
from service_support import collect, run, speak

pytestmark = pytest.mark.slow

WAV_HEADER_BYTES = 44

MORE = (" The tide began to run, and the gulls were loud over the harbour. The bread was warm, the coffee "
        "was strong, and nobody wanted to leave. We counted the boats, three blue and one red, and then we "
        "walked home along the shore.")


def service(tmp_path, config: str = "", faults: str = "", once: bool = True) -> ServiceProcess:
    cfg = tmp_path / "service.toml"
    cfg.write_text("[service]\nheartbeat_interval_s = 0.2\n" "heartbeat_timeout_s = 3.0\n" + config)
    env = {"XTTS_STREAM_FAULTS": faults}
    if once:
        env["XTTS_STREAM_FAULTS_ONCE"] = str(tmp_path / "fault-fired")
    return ServiceProcess("--engine", "piper", "--config", str(cfg), env=env)


async def status(endpoint: str) -> dict:
    async with Client(endpoint, timeout_s=10) as client:
        reply = await client.status(10)
        return {"healthy": reply.healthy, **reply.state}


async def wait_for(endpoint: str, predicate, timeout_s: float = 30.0) -> tuple[dict, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        state = await status(endpoint)
        if predicate(state):
            return state, time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s; last status: {state}")


async def first_chunk_then_more(endpoint: str):
    """One chunk spoken, then several queued at once: the queued ones must survive a worker's death."""
    client = Client(endpoint, timeout_s=60)
    utt = client.open_stream()
    await utt.send("Hello there, friend.")
    blocks = [await anext(aiter(utt))]
    # The first chunk finished (no worker holds anything) before anything else is sent.
    await wait_for(endpoint, lambda s: bool(s["workers"]) and all(w["inflight"] == 0 for w in s["workers"]))
    await utt.send(MORE)
    await utt.end()
    rest = await collect(utt)
    await client.close()
    return blocks + rest.blocks, rest


def test_worker_exit_mid_stream_redispatches_queued_chunks(tmp_path):
    with service(tmp_path, faults="exit_after=1") as svc:
        blocks, rest = run(first_chunk_then_more(svc.endpoint))
        assert rest.error is None, rest.error
        m = rest.metrics
        assert m["seam_violations"] == 0 and m["chunks"] >= 4
        offsets = [b.sample_offset for b in blocks]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), "no sample twice"
        state = run(status(svc.endpoint))
        assert state["worker_deaths"] == 1
        assert "exited" in state["last_worker_death"]["reason"]


def test_worker_sigkill_is_detected_and_recovered(tmp_path):
    with service(tmp_path) as svc:
        before = run(status(svc.endpoint))
        old_pid = before["workers"][0]["pid"]

        async def go():
            async with Client(svc.endpoint, timeout_s=60) as client:
                utt = client.speak("Hello there. " + MORE * 3)
                first = await anext(aiter(utt))  # mid-stream: its audio has begun, most of it is still to come
                rest = asyncio.create_task(collect(utt))
                killed_at = time.time()
                os.kill(old_pid, signal.SIGKILL)
                dead, _ = await wait_for(svc.endpoint, lambda s: s["worker_deaths"] == 1, 5)
                _, recovery = await wait_for(svc.endpoint,
                                             lambda s: s["workers"] and s["workers"][0]["pid"] != old_pid)
                out = await rest
                out.blocks.insert(0, first)
                return out, dead["last_worker_death"]["at"] - killed_at, recovery
        out, detection_s, recovery_s = run(go())
        assert detection_s < 1.0, f"death detected after {detection_s:.2f} s"
        print(f"worker SIGKILL: detected in {detection_s * 1000:.0f} ms, new worker ready in {recovery_s:.2f} s")
        if out.error is None:  # either the stream completes without a seam ...
            assert out.metrics["seam_violations"] == 0
        else:  # ... or it ends with an error that names the cause
            assert out.error.code == "worker_died" and "died" in out.error.message
        again = run(speak(svc.endpoint, "Still here."))
        assert again.error is None and again.metrics["audio_s"] > 0.3


def test_hung_worker_is_killed_and_replaced(tmp_path):
    with service(tmp_path, faults="hang_after=1") as svc:
        blocks, rest = run(first_chunk_then_more(svc.endpoint))
        assert rest.error is None, rest.error
        assert rest.metrics["seam_violations"] == 0
        state = run(status(svc.endpoint))
        assert state["worker_deaths"] == 1
        assert "no heartbeat" in state["last_worker_death"]["reason"]


def test_worker_that_keeps_failing_makes_the_service_unhealthy(tmp_path):
    svc = service(tmp_path, config="restart_limit = 2\nrestart_window_s = 60.0\n", faults="fail_start", once=False)
    svc.ready_timeout_s = 0  # it will never be ready; start it and watch instead
    try:
        with pytest.raises(RuntimeError, match="not ready"):
            svc.start()
        state, _ = run(wait_for(svc.endpoint, lambda s: not s["healthy"], 60))
        w0 = state["supervisor"]["processes"]["w0"]
        assert w0["given_up"] and w0["restarts"] == 2
        assert state["serving"] is False
        with pytest.raises(ServiceError, match="starting"):
            run(speak_or_raise(svc.endpoint))
        assert "not restarting it again" in svc.log_tail(20000)
    finally:
        svc.stop()


async def speak_or_raise(endpoint: str):
    out = await speak(endpoint, "Anyone there?")
    if out.error:
        raise out.error
    return out


def test_sink_death_fails_only_the_streams_it_writes_and_the_service_recovers(tmp_path):
    with service(tmp_path, config=f'wav_dir = "{tmp_path / "wav"}"\n') as svc:
        sink_pid = run(status(svc.endpoint))["supervisor"]["processes"]["sink"]["pid"]

        wav = tmp_path / "wav" / "long.wav"

        async def go():
            to_file = asyncio.create_task(speak(svc.endpoint, MORE * 12, deliver="wav:long.wav"))
            async with Client(svc.endpoint, timeout_s=60) as client:
                utt = client.speak(MORE)
                first = await anext(aiter(utt))  # the client's stream is under way ...
                deadline = time.monotonic() + 30
                while not (wav.is_file() and wav.stat().st_size > WAV_HEADER_BYTES):  # ... and so is the file's
                    assert time.monotonic() < deadline, "the sink wrote no audio to the file within 30 s"
                    await asyncio.sleep(0.02)
                os.kill(sink_pid, signal.SIGKILL)
                to_client = await collect(utt)
                to_client.blocks.insert(0, first)
            return await to_file, to_client
        to_file, to_client = run(go())
        assert to_file.error is not None and to_file.error.code == "sink_restarted"
        assert to_client.error is None and to_client.metrics["audio_s"] > 5, "client audio never passes the sink"
        to_client.assert_in_order()
        run(wait_for(svc.endpoint, lambda s: s["supervisor"]["processes"]["sink"]["pid"] != sink_pid))
        again = run(speak(svc.endpoint, "The sink is back.", deliver="wav:again.wav"))
        assert again.error is None and again.metrics["audio_s"] > 0.5


def test_coordinator_death_fails_streams_fast_and_clients_reconnect(tmp_path):
    with service(tmp_path) as svc:
        coord_pid = run(status(svc.endpoint))["supervisor"]["processes"]["coordinator"]["pid"]

        async def go():
            async with Client(svc.endpoint, timeout_s=60) as client:
                utt = client.speak(MORE * 6)
                await anext(aiter(utt))  # mid-stream: its audio has begun
                killed = time.monotonic()
                os.kill(coord_pid, signal.SIGKILL)
                out = await collect(utt)
                noticed = time.monotonic() - killed
                await client.wait_ready(60)  # the same client, reconnected to the new coordinator
                again = await collect(client.speak("Back again."))
                return out, noticed, again
        out, noticed, again = run(go())
        assert out.error is not None and out.error.code == "connection_lost"
        assert noticed < 2.0
        # The new coordinator's stream must get its own audio, not a stale stream's state or pieces.
        assert again.error is None and again.blocks, again
        again.assert_in_order()
        assert sum(b.sample_count for b in again.blocks) == round(again.metrics["audio_s"] * again.sample_rate)
        assert again.metrics["audio_s"] < 3.0, "more audio than 'Back again.' holds: another stream's words"
