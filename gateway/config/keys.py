"""API keys: the keys file (SHA-256 hashes only), its reloading, and making new keys.

A key never exists in clear outside the client and the one `keys new` print. Lookups hash the
presented key and compare digests, so no comparison ever runs over the secret itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from gateway.config.errors import ConfigError

log = logging.getLogger("gateway.config.keys")
KEY_PREFIX = "sk-gw-"

# Priority classes, as vLLM's `priority` numbers (lower is served first): a keys file or an
# x-priority header may name a class or give the number itself (0..PRIORITY_MAX).
PRIORITY_CLASSES = {"interactive": 0, "standard": 1, "batch": 2}
DEFAULT_PRIORITY = PRIORITY_CLASSES["standard"]
PRIORITY_MAX = 1000


def parse_priority(value: object) -> int:
    """A class name or a number to vLLM's priority number; ValueError otherwise (never quoting
    the value: the message may reach a log)."""
    if isinstance(value, bool):
        raise ValueError("must be interactive, standard, batch or a whole number 0..1000")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in PRIORITY_CLASSES:
            return PRIORITY_CLASSES[text]
        if text.isdigit():
            value = int(text)
    if isinstance(value, int) and 0 <= value <= PRIORITY_MAX:
        return value
    raise ValueError("must be interactive, standard, batch or a whole number 0..1000")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    models: list[str] | None = None  # None: every model
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    # Admission queue and vLLM scheduling class (see PRIORITY_CLASSES), and token budgets per
    # calendar day and month (UTC): prompt + completion tokens, as vLLM reports them.
    priority: int = DEFAULT_PRIORITY
    tokens_per_day: Annotated[StrictInt, Field(ge=1)] | None = None
    tokens_per_month: Annotated[StrictInt, Field(ge=1)] | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: object) -> int:
        return parse_priority(value)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[KeyEntry] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name (never the key) and what it may do."""

    name: str
    models: frozenset[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    priority: int = DEFAULT_PRIORITY
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    @property
    def limited(self) -> bool:
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_concurrent is not None
            or self.budgeted
        )

    @property
    def budgeted(self) -> bool:
        return self.tokens_per_day is not None or self.tokens_per_month is not None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML broke, never what the line says (it may hold a key)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return "not valid YAML"
    return f"not valid YAML (line {mark.line + 1}, column {mark.column + 1})"


def _field_problems(exc: ValidationError, doc: object) -> str:
    """Each bad field by its place and the key's name, never by its value."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        place, node = "", doc
        for step in error["loc"]:
            if isinstance(step, int) and isinstance(node, list) and step < len(node):
                node = node[step]
                name = node.get("name") if isinstance(node, dict) else None
                place += f"[{step}]" + (f" (name={name})" if isinstance(name, str) else "")
            else:
                place += f".{step}" if place else str(step)
                node = node.get(step) if isinstance(node, dict) else None
        message = error["msg"]  # pydantic's messages name the rule, not the value
        if error["loc"][-1:] == ("sha256",):
            message = "must be the key's SHA-256 (64 hex digits): the file holds hashes, not keys"
        problems.append(f"{place or '(file)'}: {message}")
    return "; ".join(problems)


def parse_keys(text: str, source: str) -> dict[str, Principal]:
    """The keys of a keys file. A file that holds no keys is refused unless it says so
    (`keys: []`): an empty or truncated file must not lock every client out by accident.
    Messages name fields and key names, never a value (a key pasted by mistake, a hash)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid keys file: {_yaml_problem(exc)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ConfigError(
            f"{source}: invalid keys file: expected `keys:` with a list of keys "
            "(write `keys: []` to run with none)"
        )
    try:
        keys = KeysFile.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid keys file: {_field_problems(exc, doc)}") from None
    table: dict[str, Principal] = {}
    for entry in keys.keys:
        if entry.sha256 in table:
            raise ConfigError(f"{source}: key {entry.name!r} has the same hash as another key")
        table[entry.sha256] = Principal(
            name=entry.name,
            models=frozenset(entry.models) if entry.models is not None else None,
            rpm=entry.rpm,
            tpm=entry.tpm,
            max_concurrent=entry.max_concurrent,
            priority=entry.priority,
            tokens_per_day=entry.tokens_per_day,
            tokens_per_month=entry.tokens_per_month,
        )
    return table


class KeyStore:
    """The keys file in memory; `watch()` re-reads it when it changes, without a restart."""

    def __init__(self, path: Path, on_reload: Callable[[bool], None] | None = None) -> None:
        self._path = path
        self._on_reload = on_reload  # told of each reload: True read, False refused
        self._stamp = self._stat()
        self._table = parse_keys(self._read(), str(path))

    def lookup(self, key: str) -> Principal | None:
        return self._table.get(hash_key(key))

    def names(self) -> list[str]:
        """The key names in force (bounded metrics labels)."""
        return sorted({p.name for p in self._table.values()})

    def principals(self) -> list[Principal]:
        return list(self._table.values())

    def _read(self) -> str:
        try:
            return self._path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self._path}: cannot read keys file: {exc.strerror}") from exc

    def _stat(self) -> tuple[int, int, int]:
        try:
            info = os.stat(self._path)
        except OSError:
            return (0, 0, 0)
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read a changed file (any file with `force`); a broken file keeps the previous
        keys (and says so)."""
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            table = parse_keys(self._read(), str(self._path))
        except ConfigError as exc:
            log.error("keeping the previous keys: %s", exc)
            if self._on_reload is not None:
                self._on_reload(False)
            return False
        if self._on_reload is not None:
            self._on_reload(True)
        before = {p.name for p in self._table.values()}
        after = {p.name for p in table.values()}
        self._table = table
        log.warning(
            "keys file reloaded: %d keys; added: %s; removed: %s",
            len(table),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.reload_if_changed)


def key_entry_yaml(name: str, key: str, **limits: object) -> str:
    entry: dict[str, object] = {"name": name, "sha256": hash_key(key)}
    entry.update({k: v for k, v in limits.items() if v is not None})
    return yaml.safe_dump([entry], sort_keys=False)
