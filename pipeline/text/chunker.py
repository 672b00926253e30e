"""Punctuation-aware, delta-invariant text chunking with provable spans.

`Chunker.feed` takes text as it arrives (an LLM's deltas) and returns each
chunk as soon as its end is certain; `flush` returns the rest at the end of
input; `split_text(t)` is `feed(t)` + `flush()`. The rules are in
docs/chunker.md; in short: the first chunk ends at the first clause or
sentence mark, later ones at punctuation near the profile's target size
(sentence ends only, after a few seconds of audio), never past the engine's
character limit, never inside a word; a cut between words goes before a
function word where it can. With ``engine_chars_per_s`` (an engine that
synthesises each chunk whole), later chunks are also kept small enough for
the engine to finish each one before the audio queued ahead of it plays out.

Spans: ``input[start:end]`` is a chunk's source, where ``input`` is every
delta concatenated. A span starts at its first non-space character and ends
after its last one; the whitespace between chunks belongs to no chunk. A
stretch that cleans to nothing speakable (no letter or digit: emoji,
punctuation) yields no chunk and belongs to no span either, so spans are
disjoint and strictly increasing, and every character outside them is
whitespace or part of such a stretch. `check_spans` verifies exactly that.

Why it is delta-invariant: the scanner turns text into candidate cuts
strictly left to right and only records one once the look-ahead it needs has
arrived; each rule in `_decide_*` answers only when every candidate it
compares is known (or the input has ended). So a decision made on a prefix is
the one the whole text gives, and a decision is made as soon as it can be.
Every look-ahead is bounded and a long run of whitespace is read once, so
`feed` costs O(new text) however the text is split.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Mapping, Sequence

from pipeline.settings import Profile, load_settings

from .budget import checked_engine_speed, chunk_budget
from .clean import clean, is_speakable, replacement
from .limits import char_limit
from .rules import ATTACHED, CLAUSE, MARKS, SENTENCE, TOO_LONG, WORD, classify_mark, is_cjk, mark_run_end, rules_for

log = logging.getLogger("xtts_stream.chunker")

# Chunker-only kinds: end of the input (ranks as a sentence end), a cut inside an
# over-long word, and a word boundary right before a function word (never in _punct).
_END, _HARD, _PHRASE = 4, 5, 6
_CUT_NAMES = {WORD: "word", CLAUSE: "clause", SENTENCE: "sentence", _END: "end", _HARD: "hard", _PHRASE: "phrase"}
# Printable ASCII that is neither whitespace nor a mark: kept as is, one output character each.
_ASCII_PLAIN = re.compile(r"[A-Za-z0-9\"#$%&'()*+\-/<=>@\[\\\]^_`{|}~]+")
_TRIM_AT = 2048  # drop consumed input once this much has piled up
_MAX_MARK_RUN = 16  # combining marks kept with their base at a hard cut; a longer run is cut inside
_nfc = functools.partial(unicodedata.normalize, "NFC")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str  # what the engine gets (cleaned)
    start: int  # offsets into the input as received
    end: int
    cut: str = "end"  # why it ended: sentence, clause, phrase, word, hard or end (of input)


@functools.lru_cache(maxsize=1)
def _default_settings():
    return load_settings()


def resolve_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, str):
        return _default_settings().profile(profile)
    raise TypeError(f"profile must be a profile name or a Profile, got {type(profile).__name__}")


def base_language(language: str) -> str:
    """"pt-BR" -> "pt", as coqui's tokenizer does."""
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"language must be a code such as 'en' or 'pt-BR', got {language!r}")
    return language.strip().lower().replace("_", "-").split("-")[0]


class Chunker:
    def __init__(self, profile: str | Profile = "fast", language: str = "en", stream: str = "",
                 char_limits: Mapping[str, int] | None = None, engine_chars_per_s: float | None = None) -> None:
        self.profile = resolve_profile(profile)
        self.language = base_language(language)
        self.limit = char_limit(self.language, char_limits)
        self.stream = stream
        # None: a streaming engine, whose first audio does not wait for the whole chunk.
        self.engine_chars_per_s = checked_engine_speed(engine_chars_per_s)
        self._rules = rules_for(self.language)
        self._buf = ""
        self._base = 0  # input offset of self._buf[0]
        self._final = False
        self._index = 0
        self._spoken = 0  # cleaned characters in emitted chunks: the estimate of audio so far
        self._first_len = 0  # cleaned characters in chunk 0
        self._hard_run = False  # the last chunk was a hard cut (warn once per over-long word)
        self._new_chunk(0)

    def feed(self, delta: str) -> list[Chunk]:
        """Add text; return the chunks whose end just became certain."""
        if not isinstance(delta, str):
            raise TypeError(f"text must be str, got {type(delta).__name__}")
        if self._final:
            raise RuntimeError("feed() after flush(): this chunker's input has ended")
        if not delta:
            return []
        # With the only reference in a local, CPython grows the string in place
        # (amortised O(len(delta))) instead of copying the whole buffer per delta.
        buf, self._buf = self._buf, ""
        buf += delta
        self._buf = buf
        return self._run()

    def flush(self) -> list[Chunk]:
        """End of input: return the remaining chunks. Calling it again returns []."""
        if self._final:
            return []
        self._final = True
        return self._run()

    def _run(self) -> list[Chunk]:
        out: list[Chunk] = []
        while True:
            self._scan()
            cut = self._decide()
            if cut is None:
                return out
            chunk = self._emit(*cut)
            if chunk is not None:
                out.append(chunk)

    # -- per-chunk scanning ---------------------------------------------------

    def _new_chunk(self, pos: int) -> None:
        if pos >= _TRIM_AT:
            self._buf = self._buf[pos:]
            self._base += pos
            pos = 0
        self._s = -1  # chunk start, known once its first non-space character arrives
        self._i = pos  # scan position: every candidate before it is known
        self._clen = 0  # cleaned length of buf[s:i]
        self._space = False  # a collapsed space is due before the next output character
        self._punct: list[tuple[int, int, int]] = []  # (end, kind, cleaned length)
        self._word_last: tuple[int, int] | None = None  # last word boundary within the window
        self._phrase_last: tuple[int, int] | None = None  # ... of those, the last before a function word
        # The last word boundary where a phrase cut may go (second half of the window), while the
        # word after it is read: (end, length, where that word starts, the word before is a function word).
        self._pending_word: tuple[int, int, int, bool] | None = None
        self._word_at = -1  # where the word being read starts
        self._weak_last: tuple[int, int] | None = None  # last word boundary right after a mark that ends nothing
        self._mark_e = -1  # end of the last run of marks
        self._after: tuple[int, int] | None = None  # first candidate of any kind past the window
        self._hard = -1  # where the engine limit forces a cut inside a word
        self._last_e = -1
        self._eot = False
        self._gap = 0  # the least any later candidate adds to _clen (see _known)
        self._ws = (-1, -1)  # buf[a:b] is known to be whitespace: a long run is read once
        p = self.profile
        self._first = self._index == 0
        if self._first:
            self._window = self._reach = min(2 * p.first_chunk_max_chars, self.limit)
        else:
            cap = self.limit
            if self.engine_chars_per_s is not None:
                cap = min(cap, chunk_budget(p, self.engine_chars_per_s, self._spoken, self._first_len))
            self._window = min(p.chunk_target_chars, cap)
            self._reach = cap  # how far a chunk may extend to end at punctuation
        self._pause = not self._first and self._spoken >= p.natural_pause_after_s * p.chars_per_second

    def _scan(self) -> None:
        buf, n, i = self._buf, len(self._buf), self._i
        if self._s < 0:
            while i < n and buf[i].isspace():
                i += 1
            self._i = i
            if i == n:
                return
            self._s = self._word_at = i
        s, final, limit, window = self._s, self._final, self.limit, self._window
        function_words, longest = self._rules.function_words, self._rules.longest_function_word
        phrase_lo = window // 2  # phrase cuts go in the second half of the window
        rules, skip_space = self._rules, self._skip_space
        self._gap = 0
        while i < n and self._hard < 0:
            c = buf[i]
            if c in MARKS:
                if self._pending_word is not None:
                    self._end_word(self._is_function_word(buf, self._word_at, i))
                found = classify_mark(buf, i, final, rules, s, skip_space, i + limit - self._clen + 1)
                if found is None or found[1] == TOO_LONG:
                    self._mark_wait(buf, i, found)
                    break
                end, kind = found
                if not self._consume(buf, i, end):
                    break
                i = self._mark_e = end
                if kind:
                    self._candidate(end, kind)
            elif c.isspace():
                # Inline, as this runs once per word. Whether the word that just ended is a
                # function word matters only next to a boundary where a phrase cut may go.
                clen, function_word = self._clen, False
                if self._pending_word is not None or phrase_lo <= clen <= window:
                    w = self._word_at
                    if i - w <= longest:
                        word = buf[w:i]
                        function_word = (word if word.isascii() else _nfc(word)).lower() in function_words
                    if self._pending_word is not None:
                        self._end_word(function_word)
                j = i + 1
                if j == n or buf[j].isspace():
                    j = self._skip_space(j)
                    if j == n and not final:
                        break
                if j < n and i != self._last_e and buf[j] not in ATTACHED:
                    if i == self._mark_e:  # "Dr. |Silva", "K. |Berg": sounds like a sentence end
                        self._weak_last = (i, clen)
                    else:  # a word boundary (`_candidate`, inline)
                        if clen <= window:
                            self._word_last = (i, clen)
                        elif self._after is None:
                            self._after = (i, WORD)
                        self._last_e = i
                        if phrase_lo <= clen <= window:  # "e | quando" is no phrase break: note the word before
                            self._pending_word = (i, clen, j, function_word)
                self._space = clen > 0
                self._word_at = i = j
            else:
                room = limit - self._clen - self._space
                # Bounded by the room left, so a 100,000-character word is read once, not once per chunk.
                m = _ASCII_PLAIN.match(buf, i, i + room) if room > 0 else None
                if m is not None:
                    self._clen += m.end() - i + self._space
                    self._space = False
                    i = m.end()
                    continue
                if i > s and i != self._last_e and is_cjk(c) and is_cjk(buf[i - 1]):
                    self._candidate(i, WORD)  # scripts without spaces: any character boundary
                if not self._consume(buf, i, i + 1):
                    break
                i += 1
        self._i = i
        if final and i == n and self._hard < 0 and not self._eot:
            self._end_of_input()

    def _mark_wait(self, buf: str, i: int, found: tuple[int, int] | None) -> None:
        """The run of marks at buf[i] is pending, or too long to fit: note what is certain already."""
        if found is not None:
            # Every mark and closing quote is at least one output character: a run longer
            # than the room left passes the limit wherever it ends, so it is not read further.
            self._hard = self._hard_cut(self._measure_run(buf, i, found[0])[2])
            return
        # Pending, but the marks already here are output text: any later candidate
        # comes after them, and if they pass the limit, so does the cut.
        grown, _, over = self._measure_run(buf, i, mark_run_end(buf, i))
        if over >= 0:
            self._hard = self._hard_cut(over)
        self._gap = grown - self._clen

    def _skip_space(self, p: int) -> int:
        """The end of the whitespace run at ``p``, remembering how far a run was already read."""
        a, b = self._ws
        start = a if a <= p <= b else p
        if a <= p <= b:
            p = b
        buf, n = self._buf, len(self._buf)
        while p < n and buf[p].isspace():
            p += 1
        self._ws = (start, p)
        return p

    def _end_word(self, function_word: bool) -> None:
        """The word after the last word boundary has ended: was that boundary before a function word?"""
        end, c, _, after_function_word = self._pending_word
        self._pending_word = None
        if function_word and not after_function_word and c <= self._window:
            self._phrase_last = (end, c)

    def _is_function_word(self, buf: str, j: int, i: int) -> bool:
        rules = self._rules
        if i - j > rules.longest_function_word:
            return False
        word = buf[j:i]
        return (word if word.isascii() else _nfc(word)).lower() in rules.function_words

    def _consume(self, buf: str, i: int, end: int) -> bool:
        """Add buf[i:end] to the cleaned length; False (and a hard cut) if it would pass the limit."""
        clen, space, over = self._measure(buf, i, end)
        if over >= 0:
            self._hard = self._hard_cut(over)
            return False
        self._clen, self._space = clen, space
        return True

    def _measure(self, buf: str, i: int, end: int) -> tuple[int, bool, int]:
        """Cleaned length and due space after buf[i:end], and where it first passes the limit (-1: never)."""
        clen, space, limit = self._clen, self._space, self.limit
        for pos in range(i, end):
            for out in replacement(buf[pos]):
                if out == " ":
                    space = clen > 0
                elif clen + 1 + space > limit:
                    return clen, space, pos
                else:
                    clen += 1 + space
                    space = False
        return clen, space, -1

    def _measure_run(self, buf: str, i: int, end: int) -> tuple[int, bool, int]:
        """`_measure` for a run of marks and closers: ASCII ones are one output character each."""
        if not buf[i:end].isascii():
            return self._measure(buf, i, end)
        room = self.limit - self._clen - self._space
        if end - i <= room:
            return self._clen + self._space + end - i, False, -1
        fit = max(room, 0)
        return self._clen + (self._space if fit else 0) + fit, self._space and not fit, i + fit

    def _hard_cut(self, pos: int) -> int:
        # Keep a combining mark with its base character (unless the run of them is
        # absurdly long); end the span on a non-space.
        buf, s = self._buf, self._s
        back = pos
        while back > max(s + 1, pos - _MAX_MARK_RUN) and unicodedata.category(buf[back])[0] == "M":
            back -= 1
        if unicodedata.category(buf[back])[0] != "M":
            pos = back
        while pos > s + 1 and buf[pos - 1].isspace():
            pos -= 1
        return max(pos, s + 1)

    def _candidate(self, end: int, kind: int) -> None:
        c = self._clen
        if kind > WORD:
            self._punct.append((end, kind, c))
        elif c <= self._window:
            self._word_last = (end, c)
        if c > self._window and self._after is None:
            self._after = (end, kind)
        self._last_e = end

    def _end_of_input(self) -> None:
        self._eot = True
        end = len(self._buf)
        if self._pending_word is not None:
            self._end_word(self._is_function_word(self._buf, self._word_at, end))
        while self._buf[end - 1].isspace():
            end -= 1
        if self._punct and self._punct[-1][0] == end:
            self._punct.pop()
        self._punct.append((end, _END, self._clen))
        if self._clen > self._window and self._after is None:
            self._after = (end, _END)

    # -- decisions ----------------------------------------------------------------

    def _decide(self) -> tuple[int, int] | None:
        if self._s < 0:
            return None
        done = self._hard >= 0 or (self._final and self._i == len(self._buf))
        return self._decide_first(done) if self._first else self._decide_later(done)

    def _known(self, done: bool, upto: int) -> bool:
        """Every candidate with cleaned length <= upto is known.

        The input may end right here, and its end is a candidate at the current
        length; only a pending run of marks, which is already there, adds to it.
        """
        return done or self._clen + self._gap > upto

    def _decide_first(self, done: bool) -> tuple[int, int] | None:
        window = self._window
        if self._punct:
            end, kind, c = self._punct[0]
            if c <= window:
                return end, kind
        elif not self._known(done, window):
            return None
        return self._fallback(done, window)

    def _decide_later(self, done: bool) -> tuple[int, int] | None:
        target, reach, punct = self._window, self._reach, self._punct
        # "Near the target": a sentence end from a quarter of it, a clause mark from half.
        quarter, half = target // 4, target // 2
        if not self._known(done, target):
            return None
        if self._pause:  # natural pauses: a sentence end wherever one fits
            hit = _last(punct, quarter, target, SENTENCE) or _first(punct, target, reach, SENTENCE)
            if hit:
                return hit
            if not self._known(done, reach):
                return None
            hit = _last(punct, 0, quarter - 1, SENTENCE)
            if hit:
                return hit
        hit = _last(punct, quarter, target, SENTENCE) or _last(punct, half, target, CLAUSE) \
            or _first(punct, target, reach, CLAUSE)
        if hit:
            return hit
        if not self._known(done, reach):
            return None
        hit = _last(punct, 0, quarter - 1, SENTENCE) or _last(punct, 0, half - 1, CLAUSE)
        return hit or self._fallback(done, target)

    def _fallback(self, done: bool, window: int) -> tuple[int, int] | None:
        """No punctuation to use: a word boundary in the window (before a function word
        in its second half if there is one), else the first candidate after it; only
        then a boundary right after a mark that ends nothing, and last a hard cut."""
        if not self._known(done, window):
            return None
        lo = window // 2
        phrase = self._phrase_last if self._phrase_last is not None and self._phrase_last[1] >= lo else None
        pending = self._pending_word
        if pending is not None and not pending[3] and self._hard < 0 and not self._eot \
                and self._may_be_function_word(pending[2]):
            return None  # the last boundary may yet turn out to be before a function word ("an" -> "and")
        if phrase is not None:
            return phrase[0], _PHRASE
        if self._word_last is not None:
            return self._word_last[0], WORD
        if self._after is not None:
            return self._after
        if not done:
            return None
        return (self._weak_last[0], WORD) if self._weak_last is not None else (self._hard, _HARD)

    def _may_be_function_word(self, j: int) -> bool:
        """The word at buf[j:] (still being read) is, or may grow into, a function word."""
        size, rules = self._i - j, self._rules
        if size > rules.longest_function_word:
            return False
        word = unicodedata.normalize("NFC", self._buf[j:self._i]).lower()
        return word in rules.function_words or word in rules.function_prefixes

    # -- output -------------------------------------------------------------------

    def _emit(self, end: int, kind: int) -> Chunk | None:
        s = self._s
        text = clean(self._buf[s:end])
        start, stop = self._base + s, self._base + end
        chunk = None
        if is_speakable(text):
            chunk = Chunk(self._index, text, start, stop, _CUT_NAMES[kind])
            if self._index == 0:
                self._first_len = len(text)
            self._index += 1
            self._spoken += len(text)
            self._log_cut(chunk, kind)
        else:
            log.debug("stream %s: [%d, %d) has nothing speakable, no chunk", self.stream, start, stop)
        self._new_chunk(end)
        return chunk

    def _log_cut(self, chunk: Chunk, kind: int) -> None:
        if kind in (WORD, _PHRASE) and not self._first:
            log.warning("stream %s: no punctuation near the target size, cut at a word boundary at offset %d",
                        self.stream, chunk.end)
        elif kind == _HARD and not self._hard_run:
            log.warning("stream %s: a word longer than the engine limit (%d characters) cut at offset %d",
                        self.stream, self.limit, chunk.end)
        self._hard_run = kind == _HARD
        log.debug("stream %s chunk %d [%d, %d) %s: %r", self.stream, chunk.index, chunk.start, chunk.end,
                  chunk.cut, chunk.text)


def _last(punct: Sequence[tuple[int, int, int]], lo: int, hi: int, kind: int) -> tuple[int, int] | None:
    """The last candidate of at least ``kind`` with cleaned length in [lo, hi]."""
    for end, k, c in reversed(punct):
        if c < lo:
            return None
        if c <= hi and k >= kind:
            return end, k
    return None


def _first(punct: Sequence[tuple[int, int, int]], above: int, hi: int, kind: int) -> tuple[int, int] | None:
    """The first candidate of at least ``kind`` with cleaned length in (above, hi]."""
    for end, k, c in punct:
        if c > hi:
            return None
        if c > above and k >= kind:
            return end, k
    return None


def split_text(text: str, profile: str | Profile = "fast", language: str = "en",
               char_limits: Mapping[str, int] | None = None, engine_chars_per_s: float | None = None) -> list[Chunk]:
    """The chunks of a whole text: the same as feeding it to a `Chunker` and flushing."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    chunker = Chunker(profile, language, char_limits=char_limits, engine_chars_per_s=engine_chars_per_s)
    return chunker.feed(text) + chunker.flush()


def check_spans(text: str, chunks: Sequence[Chunk], limit: int | None = None) -> None:
    """Raise ValueError unless ``chunks`` are valid for ``text`` (see the module docstring)."""
    covered = 0
    for expected, ch in enumerate(chunks):
        where = f"chunk {ch.index} [{ch.start}, {ch.end})"
        if ch.index != expected:
            raise ValueError(f"{where}: index {ch.index}, expected {expected}")
        if not covered <= ch.start < ch.end <= len(text):
            raise ValueError(f"{where}: out of order, overlapping or outside the text (previous end {covered})")
        source = text[ch.start:ch.end]
        if source[0].isspace() or source[-1].isspace():
            raise ValueError(f"{where}: span starts or ends with whitespace")
        if is_speakable(text[covered:ch.start]):
            raise ValueError(f"{where}: speakable text [{covered}, {ch.start}) belongs to no chunk")
        if ch.text != clean(source) or not is_speakable(ch.text):
            raise ValueError(f"{where}: text {ch.text!r} is not the cleaned, speakable source {source!r}")
        if limit is not None and len(ch.text) > limit:
            raise ValueError(f"{where}: {len(ch.text)} characters, engine limit {limit}")
        covered = ch.end
    if is_speakable(text[covered:]):
        raise ValueError(f"speakable text after offset {covered} belongs to no chunk")
