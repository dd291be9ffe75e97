"""Settings in sections, and the docs' settings table generated from them (app/settings.py)."""

from __future__ import annotations

from pathlib import Path

from app.settings import SECTIONS, Settings, env_name, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_exactly_one_section() -> None:
    listed = [name for names in SECTIONS.values() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields), "add the new setting to one section of SECTIONS"
    assert len(listed) == len(set(listed))


def test_the_docs_table_is_the_generated_one() -> None:
    # Regenerate with: python -m app.settings > docs/settings.md
    assert (ROOT / "docs" / "settings.md").read_text() == settings_table()


def test_durations_are_named_by_their_unit() -> None:
    for name, field in Settings.model_fields.items():
        if field.annotation in (float, int) and any(w in name for w in ("timeout", "ttl", "poll", "graceful", "skew")):
            assert env_name(name).endswith(("_S", "_MS")), env_name(name)


def test_process_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SEQREC_BUNDLES", "/b")
    monkeypatch.setenv("SEQREC_WORKERS", "3")
    monkeypatch.setenv("SEQREC_GRACEFUL_S", "7.5")
    monkeypatch.setenv("SEQREC_LOG_LEVEL", "info")
    s = Settings()
    assert (s.workers, s.graceful, s.log_level) == (3, 7.5, "info")
