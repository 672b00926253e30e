"""Settings: defaults, user profiles, per-request overrides, and errors that list the valid names."""

import pytest

from pipeline.settings import SettingsError, load_settings, settings_from_dict


def test_defaults_have_fast_and_cinematic():
    s = load_settings(env={})
    fast, cine = s.profile("fast"), s.profile("CINEMATIC")
    assert (fast.first_chunk_max_chars, fast.prebuffer_ms, fast.block_ms) == (20, 200, 25)
    assert (cine.prebuffer_ms, cine.block_ms) == (500, 60)
    assert s.profile().name == "fast"


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(SettingsError, match="valid profiles: cinematic, fast"):
        load_settings(env={}).profile("slow")


def test_override_and_unknown_override_field():
    s = load_settings(env={})
    assert s.profile("fast", {"temperature": 0.5}).temperature == 0.5
    with pytest.raises(SettingsError, match="unknown field 'temprature'.*valid fields:.*temperature"):
        s.profile("fast", {"temprature": 0.5})
    with pytest.raises(SettingsError, match="must be a number"):
        s.profile("fast", {"temperature": "hot"})
    with pytest.raises(SettingsError, match="top_p"):
        s.profile("fast", {"top_p": 1.5})


def test_user_file_adds_profile_and_overrides_service(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[service]\nworkers = 2\n[profiles.narrator]\nbase = "cinematic"\nblock_ms = 40\n'
                 '[profiles.fast]\nprebuffer_ms = 150\n')
    s = load_settings(f, env={})
    assert s.service.workers == 2
    assert s.profile("narrator").block_ms == 40 and s.profile("narrator").prebuffer_ms == 500
    assert s.profile("fast").prebuffer_ms == 150 and s.profile("fast").block_ms == 25


@pytest.mark.parametrize("text, match", [
    ("[service]\nwrokers = 2\n", "unknown field 'wrokers' in \\[service\\]"),
    ("[servce]\n", "unknown config section"),
    ("[profiles.x]\nbase = 'nope'\n", "unknown base"),
    ("not toml [", "not valid TOML"),
])
def test_bad_user_files_are_named_errors(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(f, env={})


def test_environment_config_and_checkpoint(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[service]\nlanguage = 'pt'\n")
    s = load_settings(env={"XTTS_STREAM_CONFIG": str(f), "XTTS_STREAM_CHECKPOINT": "/ckpt"})
    assert s.service.language == "pt" and s.service.checkpoint == "/ckpt"


def test_round_trip_through_dict():
    s = load_settings(env={})
    assert settings_from_dict(s.to_dict()) == s
