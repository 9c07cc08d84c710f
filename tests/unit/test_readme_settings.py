"""Every setting is documented: README's settings table names each GATEWAY_* variable."""

from __future__ import annotations

from gateway.config.settings import Settings
from tests.procs import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"GATEWAY_{name.upper()}" for name in Settings.model_fields
        if f"`GATEWAY_{name.upper()}`" not in readme
    ]  # fmt: skip
    assert not missing, f"README.md does not document: {', '.join(missing)}"
