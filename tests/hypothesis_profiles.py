"""Hypothesis settings for the chunker's property tests: random locally, fixed in CI.

On a developer's machine every run draws new random examples (and Hypothesis's
example database replays the ones that failed before), so new corner cases
keep turning up. With the ``CI`` environment variable set, the search is
derandomized (each test draws the same examples on every run, derived from
its name) and uses no database, so CI fails on a change to the code, never on
a newly drawn example. Corner cases found locally are pinned with ``@example``.

The profiles are applied per test (as the parent of each test's settings), not
loaded globally, so importing this module changes no other test's settings.

For a long hunt, ``CHUNKER_MAX_EXAMPLES`` replaces every test's example count::

    CHUNKER_MAX_EXAMPLES=5000 pytest tests/test_chunker_properties.py -q --hypothesis-seed=7
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEV, CI = "chunker-dev", "chunker-ci"

# Built on Hypothesis's own default, not on whatever profile is loaded: Hypothesis
# loads its "ci" profile by itself when it thinks it runs in CI.
settings.register_profile(DEV, parent=settings.get_profile("default"), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(CI, parent=settings.get_profile(DEV), derandomize=True, database=None, print_blob=True)


def in_ci() -> bool:
    """True when ``CI`` is set, to any value (Hypothesis's own rule for it)."""
    return "CI" in os.environ


def max_examples(default: int) -> int:
    """``CHUNKER_MAX_EXAMPLES`` if set, else ``default``."""
    raw = os.environ.get("CHUNKER_MAX_EXAMPLES", "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"CHUNKER_MAX_EXAMPLES must be a positive whole number, got {raw!r}")
    return int(raw)


def property_settings(examples: int) -> settings:
    """Settings for one property test: the CI or the developer profile, with its example count."""
    return settings(settings.get_profile(CI if in_ci() else DEV), max_examples=max_examples(examples))
