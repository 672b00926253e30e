"""A Pipecat pipeline that speaks an LLM-like text stream into a WAV file, through xtts-stream.

    python examples/pipecat_llm_to_wav.py                       # starts a Piper service of its own
    python examples/pipecat_llm_to_wav.py --endpoint tcp://127.0.0.1:5555 --out reply.wav

Nothing leaves the machine: the "LLM" is a list of tokens sent a few
milliseconds apart, and with no --endpoint the service runs here on an ipc://
socket. Needs `pip install 'xtts-stream[pipecat]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from loguru import logger  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from pipeline.integrations.pipecat_tts import XttsStreamTTSService  # noqa: E402

REPLY = ("Sure! The lighthouse keeper climbs a hundred and twelve steps every evening, "
         "lights the lamp at dusk, and writes the weather in her log before midnight.")


class WavWriter(FrameProcessor):
    """Writes the TTS's audio frames to a WAV file as they arrive; `finished` is set at TTSStoppedFrame."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.wav: wave.Wave_write | None = None
        self.finished = asyncio.Event()

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if self.wav is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.wav = wave.open(str(self.path), "wb")
                self.wav.setnchannels(frame.num_channels)
                self.wav.setsampwidth(2)
                self.wav.setframerate(frame.sample_rate)
            self.wav.writeframes(frame.audio)
        elif isinstance(frame, MetricsFrame):
            for data in frame.data:
                if isinstance(data, TTFBMetricsData) and data.value > 0:
                    print(f"time to first audio frame: {data.value * 1000:.1f} ms")
        elif isinstance(frame, TTSStoppedFrame):
            self.finished.set()
        await self.push_frame(frame, direction)

    def close(self) -> None:
        if self.wav is not None:
            self.wav.close()


async def speak(endpoint: str, out: Path, profile: str) -> None:
    writer = WavWriter(out)
    worker = PipelineWorker(Pipeline([XttsStreamTTSService(endpoint=endpoint, profile=profile), writer]),
                            params=PipelineParams(enable_metrics=True), enable_rtvi=False)
    runner = WorkerRunner()
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await worker.queue_frame(LLMFullResponseStartFrame())
    for token in REPLY.split(" "):  # an LLM writing ~50 tokens a second
        await worker.queue_frame(LLMTextFrame(token + " "))
        await asyncio.sleep(0.02)
    await worker.queue_frame(LLMFullResponseEndFrame())
    await writer.finished.wait()
    await worker.queue_frame(EndFrame())
    await running
    writer.close()
    print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default=None, help="a running service (default: start a Piper one here)")
    ap.add_argument("--out", type=Path, default=Path("out/pipecat.wav"))
    ap.add_argument("--profile", default="fast")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.endpoint:
        asyncio.run(speak(args.endpoint, args.out, args.profile))
        return 0
    from pipeline.processes.service_process import ServiceProcess
    print("starting a Piper service (a few seconds)...")
    import os
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with ServiceProcess("--engine", "piper", env=env) as service:
        asyncio.run(speak(service.endpoint, args.out, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
