"""The keys file refuses what would lock everyone out by accident and never repeats a value it
was given (a key pasted into `sha256:`, a hash, a line of YAML) in its error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.keys import KeyStore, hash_key, new_key, parse_keys

KEY = new_key()


@pytest.mark.parametrize(
    "text",
    ["", "   \n", "keys:\n", "# all gone\n", "other: 1\n", "keys: {}\n"],
    ids=["empty", "blank", "null-keys", "comment-only", "no-keys", "not-a-list"],
)
def test_a_file_without_a_list_of_keys_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"keys: \[\]"):
        parse_keys(text, "keys.yaml")


def test_an_explicitly_empty_list_is_allowed() -> None:
    assert parse_keys("keys: []\n", "keys.yaml") == {}


def test_a_raw_key_pasted_as_the_hash_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_keys(f"keys:\n  - {{name: team-a, sha256: {KEY}}}\n", "keys.yaml")
    message = str(refused.value)
    assert "keys[0] (name=team-a).sha256" in message
    assert KEY[8:20] not in message  # not even a part of it


def test_a_truncated_file_names_the_line_not_its_content() -> None:
    digest = hash_key(KEY)
    text = f"keys:\n  - {{name: a, sha256: {digest}}}\n  - {{name: b, sha256: '{digest[:30]}"
    with pytest.raises(ConfigError) as refused:
        parse_keys(text, "keys.yaml")
    message = str(refused.value)
    assert "line" in message
    assert digest[:12] not in message


def test_a_bad_limit_names_the_key_and_the_field() -> None:
    text = f"keys:\n  - {{name: batch, sha256: {hash_key(KEY)}, rpm: -5}}\n"
    with pytest.raises(ConfigError, match=r"keys\[0\] \(name=batch\)\.rpm") as refused:
        parse_keys(text, "keys.yaml")
    assert "-5" not in str(refused.value)


def test_a_reload_logs_the_names_added_and_removed_and_a_broken_file_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    one, two = new_key(), new_key()
    path.write_text(f"keys:\n  - {{name: one, sha256: {hash_key(one)}}}\n")
    store = KeyStore(path)
    path.write_text(f"keys:\n  - {{name: two, sha256: {hash_key(two)}}}\n")
    with caplog.at_level(logging.WARNING, logger="gateway.keys"):
        assert store.reload_if_changed()
    reload_line = next(r for r in caplog.records if "reloaded" in r.getMessage())
    assert reload_line.levelno == logging.WARNING
    assert "added: two" in reload_line.getMessage()
    assert "removed: one" in reload_line.getMessage()
    path.write_text("")  # truncated to nothing, e.g. a failed copy
    assert not store.reload_if_changed()
    assert store.lookup(two) is not None  # the previous keys stay in force


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "urgent"),  # no such class
        ("priority", "-7"),
        ("priority", "1.5"),
        ("tokens_per_day", "-250"),  # negative budget
        ("tokens_per_day", "0"),
        ("tokens_per_month", "2.5"),  # not a whole number
        ("tokens_per_month", "'9000'"),  # a string is not a number of tokens
    ],
)
def test_a_bad_priority_or_budget_names_the_key_and_the_field_never_the_value(
    field: str, value: str
) -> None:
    text = f"keys:\n  - {{name: nightly, sha256: {hash_key(KEY)}, {field}: {value}}}\n"
    with pytest.raises(ConfigError) as refused:
        parse_keys(text, "keys.yaml")
    message = str(refused.value)
    assert f"keys[0] (name=nightly).{field}" in message
    if len(value.strip("'")) > 1:  # ("0" is in "keys[0]")
        assert value.strip("'") not in message
    assert hash_key(KEY)[:12] not in message


def test_priority_classes_and_numbers_and_budgets_are_read() -> None:
    keys = [new_key() for _ in range(4)]
    text = (
        "keys:\n"
        f"  - {{name: ui, sha256: {hash_key(keys[0])}, priority: interactive}}\n"
        f"  - {{name: etl, sha256: {hash_key(keys[1])}}}\n"
        f"  - {{name: nightly, sha256: {hash_key(keys[2])}, priority: batch,"
        " tokens_per_day: 1000000, tokens_per_month: 20000000}\n"
        f"  - {{name: research, sha256: {hash_key(keys[3])}, priority: 5}}\n"
    )
    table = parse_keys(text, "keys.yaml")
    ui, etl, nightly, research = (table[hash_key(k)] for k in keys)
    assert (ui.priority, etl.priority, nightly.priority, research.priority) == (0, 1, 2, 5)
    assert (nightly.tokens_per_day, nightly.tokens_per_month) == (1_000_000, 20_000_000)
    assert nightly.budgeted
    assert nightly.limited
    assert not ui.budgeted
    assert not ui.limited


def test_a_reload_with_a_bad_class_keeps_the_old_keys_in_force(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    one = new_key()
    path.write_text(f"keys:\n  - {{name: one, sha256: {hash_key(one)}, priority: batch}}\n")
    store = KeyStore(path)
    path.write_text(f"keys:\n  - {{name: one, sha256: {hash_key(one)}, priority: asap}}\n")
    assert not store.reload_if_changed(force=True)
    principal = store.lookup(one)
    assert principal is not None
    assert principal.priority == 2
    path.write_text(f"keys:\n  - {{name: one, sha256: {hash_key(one)}, tokens_per_day: -1}}\n")
    assert not store.reload_if_changed(force=True)
    assert store.lookup(one) == principal
