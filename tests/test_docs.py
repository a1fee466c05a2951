"""The configuration reference documents every key the code accepts."""

from __future__ import annotations

from pathlib import Path

from arrowport import config as cfg

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _all_keys() -> set[str]:
    keys = set(cfg._TOP_KEYS).union(*cfg.SECTION_KEYS)
    keys |= set(cfg.Limits.__dataclass_fields__) | set(cfg.DuckDBSettings.__dataclass_fields__)
    keys |= set(cfg.FlightSettings.__dataclass_fields__)
    keys |= set(cfg.Http2Settings.__dataclass_fields__)
    keys |= set(cfg.GroupCommitSettings.__dataclass_fields__)
    keys |= set(cfg.ENV_OVERRIDES) | {cfg.ENV_CONFIG_PATH, cfg.ENV_TOKEN}
    return keys


def test_every_config_key_is_documented() -> None:
    """Each accepted key and environment variable appears in docs/configuration.md."""
    text = DOC.read_text()
    missing = sorted(k for k in _all_keys() if f"`{k}`" not in text)
    assert not missing, f"undocumented config keys: {missing}"
