"""Chunker figures: throughput, what `feed()` costs per delta, how long the first
chunk waits for its look-ahead, and which kinds of cut a long text gets.

`run(quick)` returns the figures as a dict; `scripts/bench chunker` prints them.
The throughput text is generated from a fixed sentence bank with a fixed seed,
so runs compare; it mixes plain sentences, abbreviations, numbers, quotes, long
clause chains, the odd run-on without punctuation and an emoji now and then.
The look-ahead and cut figures use the texts in tests/data/ (our own: an
English and a Portuguese corpus of about 3,000 words each, and a list of
sentence starts that once fooled the first-chunk rule).
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
from collections import Counter
from pathlib import Path

from pipeline.text.chunker import Chunker, split_text

from .stats import pct

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

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
    return {
        "deltas": len(parts),
        "mean_us": round(statistics.fmean(costs) / 1000, 2),
        "p99_us": round(pct(costs, 99) / 1000, 2),
        "p999_us": round(pct(costs, 99.9) / 1000, 2),
    }


def sample_texts() -> list[tuple[str, str]]:
    """(language, text): the sentence starts, then every paragraph of both corpora."""
    out = []
    for line in (DATA / "first_chunks.tsv").read_text(encoding="utf-8").splitlines():
        language, text = line.split("\t", 1)
        out.append((language, text))
    for language in ("en", "pt"):
        corpus = (DATA / f"corpus_{language}.txt").read_text(encoding="utf-8")
        out += [(language, p.strip()) for p in corpus.split("\n\n") if p.strip()]
    return out


def first_chunk_wait(texts: list[tuple[str, str]], profile: str) -> dict:
    """How many characters past its end the first chunk waited for, fed one character at a time.

    ``lookahead``: first chunks that end at a mark, where the wait is the mark's
    look-ahead (the space after a comma; the next word's first letter after a
    period; the whole next word after an abbreviation). ``all``: every first
    chunk, where a cut between words also waits for the window to fill.
    Texts whose first chunk comes out only at the end of input are not counted.
    """
    marks, every = [], []
    for language, text in texts:
        chunker = Chunker(profile, language)
        for fed, ch in enumerate(text, 1):
            out = chunker.feed(ch)
            if out:
                every.append(fed - out[0].end)
                if out[0].cut in ("sentence", "clause"):
                    marks.append(fed - out[0].end)
                break
    return {"texts": len(texts), "lookahead": _spread(marks), "all": _spread(every)}


def _spread(values: list[int]) -> dict:
    return {"n": len(values), "mean_chars": round(statistics.fmean(values), 2), "max_chars": max(values)}


def cut_kinds(profile: str) -> dict:
    """How each chunk of each corpus (one stream per language) ended."""
    out = {}
    for language in ("en", "pt"):
        text = (DATA / f"corpus_{language}.txt").read_text(encoding="utf-8")
        chunks = split_text(text, profile, language)
        kinds = Counter(c.cut for c in chunks[1:])
        out[language] = {"chunks": len(chunks), "later": dict(sorted(kinds.items())),
                         "between_words": kinds["word"] + kinds.get("phrase", 0)}
    return out


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
        **corpus_figures(),
    }


def corpus_figures() -> dict:
    if not (DATA / "first_chunks.tsv").is_file():  # an install without the tests
        return {}
    texts = sample_texts()
    return {
        "first_chunk_lookahead": {p: first_chunk_wait(texts, p) for p in ("fast", "cinematic")},
        "cut_kinds": {p: cut_kinds(p) for p in ("fast", "cinematic")},
    }


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=2)
    print()
