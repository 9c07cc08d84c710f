"""tests/netns.py: skipped with a reason where it cannot run, and names that cannot collide."""

from __future__ import annotations

import os
import shutil

import pytest

from tests import netns


def test_not_root_is_a_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        netns.skip_unless_possible()


def test_no_ip_command_is_a_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="iproute2"):
        netns.skip_unless_possible()


def test_two_runs_get_different_names_and_only_dead_runs_are_swept() -> None:
    first, second = netns.Net(), netns.Net()
    assert first.tag != second.tag
    match = netns._NAME.match(first.router)
    assert match is not None
    assert int(match.group(1)) == os.getpid()  # alive: never swept by another run
