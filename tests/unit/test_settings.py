"""Settings come from GATEWAY_* variables; the command line wins over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.__main__ import parse_args
from gateway.config.settings import Settings


def test_environment_sets_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9123")
    monkeypatch.setenv("GATEWAY_IDLE_TIMEOUT", "7.5")
    monkeypatch.setenv("GATEWAY_CONFIG", "/etc/models.yaml")
    settings = Settings()
    assert (settings.port, settings.idle_timeout, settings.config) == (
        9123,
        7.5,
        Path("/etc/models.yaml"),
    )


def test_command_line_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9123")
    settings = Settings(**parse_args(["--port", "8001", "--config", "x.yaml"]))
    assert (settings.port, settings.config) == (8001, Path("x.yaml"))


def test_nonsense_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TOTAL_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="total_timeout"):
        Settings()
