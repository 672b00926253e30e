"""Chunker throughput: `split_text` on a long text, and what `feed()` costs per delta.

`run(quick)` returns the figures as a dict; `scripts/bench chunker` prints them.
The text is generated from a fixed sentence bank with a fixed seed, so runs
compare; it mixes plain sentences, abbreviations, numbers, quotes, long
clause chains, the odd run-on without punctuation and an emoji now and then.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import statistics
import sys
import time

from .chunker import Chunker, split_text

SENTENCES = [
    "The otherworldly light spilled over the hills as the caravan moved on.",
    "Dr. Silva said the results were ready, e.g. the blood tests and the scans.",
    "It costs $29.95, or about 1,250 yen, which is cheap for version 2.0.1.",
    "He said \"Stop.\" Then he walked away without another word.",
    "Wait... what was that noise coming from the basement?",
    "We met at 7:45 p.m. and talked until midnight.",
    "Mr. and Mrs. Jones moved to the U.S. last year; they love it there.",
    "Well, I suppose so, but only if the weather holds, the roads stay open, and nobody gets sick.",
    "Pi is roughly 3.14159, give or take.",
    "Why would anyone do that?! Nobody knows.",
    "The quick brown fox jumps over the lazy dog and keeps running through the field past the old barn "
    "and the river and the mill without ever looking back at the farmer who chased it",
    "She smiled \U0001f600 and waved.",
    "\u00abOl\u00e1,\u00bb disse a Sra. Lima, \u00abo pre\u00e7o \u00e9 R$ 1.299,90.\u00bb",
]


def bench_text(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        sentence = rng.choice(SENTENCES)
        parts.append(sentence)
        parts.append("\n\n" if rng.random() < 0.1 else " ")
        size += len(sentence) + 1
    return "".join(parts)[:chars]


def deltas(text: str, mode: str, seed: int = 11) -> list[str]:
    if mode == "char":
        return list(text)
    if mode == "word":
        return [w + " " for w in text.split(" ")]
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 24)
        out.append(text[pos:pos + size])
        pos += size
    return out


def time_split(text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        split_text(text)
        best = min(best, time.perf_counter() - t0)
    return len(text) / best


def time_feed(parts: list[str]) -> dict[str, float]:
    chunker = Chunker()
    costs = []
    clock = time.perf_counter_ns
    for part in parts:
        t0 = clock()
        chunker.feed(part)
        costs.append(clock() - t0)
    chunker.flush()
    costs.sort()
    return {
        "deltas": len(parts),
        "mean_us": round(statistics.fmean(costs) / 1000, 2),
        "p99_us": round(costs[int(0.99 * (len(costs) - 1))] / 1000, 2),
        "p999_us": round(costs[int(0.999 * (len(costs) - 1))] / 1000, 2),
    }


def run(quick: bool) -> dict:
    """Throughput figures for this machine (quick: smaller texts, one repeat)."""
    logging.getLogger("xtts_stream.chunker").setLevel(logging.ERROR)  # word-cut warnings are expected here
    long_text = bench_text(50_000 if quick else 500_000)
    stream_text = long_text[: 20_000 if quick else 100_000]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "split_text": {
            "chars": len(long_text),
            "chunks": len(split_text(long_text)),
            "chars_per_s": round(time_split(long_text, 1 if quick else 3)),
        },
        "feed": {mode: time_feed(deltas(stream_text, mode)) for mode in ("char", "word", "random")},
    }


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=2)
    print()
