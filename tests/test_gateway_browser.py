"""The page at / in a real browser: headless Chromium (Debian's) speaks a sentence and schedules its audio.

Chromium comes from `scripts/ensure_browser` (run by scripts/test); its absence
is a failure here, not a skip. The screenshot is kept in out/test-artifacts/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("XTTS_STREAM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"
SENTENCE = "The lighthouse keeper lit the lamp, and the harbour woke up."


def browser(playwright):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/ensure_browser (apt-get install chromium)"
    return playwright.chromium.launch(executable_path=CHROMIUM,
                                      args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])


@pytest.mark.parametrize("button", ["#speak", "#stream"])
def test_page_speaks_and_schedules_audio_for_playback(piper_service, button):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = browser(p)
        try:
            page = chromium.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(piper_service.http_url + "/")
            page.wait_for_function("document.querySelector('#service').textContent === 'ready'", timeout=30_000)
            page.fill("#text", SENTENCE)
            page.fill("#pace", "20")
            page.click(button)
            page.wait_for_function("window.xttsPage.done !== null || window.xttsPage.errors.length > 0",
                                   timeout=60_000)
            page.wait_for_function("document.querySelector('#metrics td') !== null", timeout=30_000)
            result = page.evaluate("() => window.xttsPage")
            played = page.evaluate("() => new Promise(r => setTimeout(() => r(window.xttsPage.scheduledSeconds), 50))")
            page.screenshot(path=str(ARTIFACTS / f"gateway-page-{button[1:]}.png"), full_page=True)
        finally:
            chromium.close()
    assert not problems, problems
    assert result["errors"] == [] and result["state"] == "done", result
    done = result["done"]
    assert result["scheduledBuffers"] > 0 and played > 0, "audio was scheduled for playback"
    # All of it: the page scheduled exactly the audio the service says it made.
    assert result["receivedSamples"] == round(done["audio_s"] * 22050)
    assert abs(result["scheduledSeconds"] - done["audio_s"]) < 0.01
    assert result["firstAudioMs"] > 0 and result["playStartMs"] >= result["firstAudioMs"]
