"""docs/CONFIG.md is generated from the config classes: it must be current, and every key must say what it does."""

from __future__ import annotations

from pathlib import Path

from imagefleet.configs.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_config_reference_is_current() -> None:
    assert DOC.read_text() == render(), "regenerate it: python -m imagefleet.configs.reference > docs/CONFIG.md"


def test_every_key_is_documented() -> None:
    undocumented = [line for line in render().splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented, undocumented


def test_every_variant_has_its_section() -> None:
    text = render()
    for tag in ("backend: diffusers", "backend: openai", "backend: gemini", "mode: cascade", "backend: clip"):
        assert f"(`{tag}`)" in text
