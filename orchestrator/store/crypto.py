"""Secrets at rest: adapter tokens and secret settings encrypted with Fernet.

The keys come from ``SLUICE_SECRET_KEY`` (comma-separated Fernet keys) or from the
``secrets.key`` file in the data directory (one key per line), created 0600 on first
start. The first key encrypts; every key decrypts, so a rotation can re-encrypt at its own
pace (``sluice secrets rotate``). A sealed value is ``enc:v1:<Fernet token>`` over the
JSON of the value; anything else read from the store is a value written before
encryption, which :meth:`SecretBox.open` returns as it is (start-up seals them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from orchestrator.store.audit import write_private
from policies.errors import SluiceError

PREFIX = "enc:v1:"
KEY_FILE = "secrets.key"


class SecretKeyError(SluiceError):
    """The secrets key is missing, malformed, or does not open a stored secret."""

    code = "secret_key_error"


def parse_keys(text: str, origin: str) -> list[Fernet]:
    keys = [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]
    if not keys:
        raise SecretKeyError(f"no secrets key in {origin}")
    out = []
    for i, k in enumerate(keys, 1):
        try:
            out.append(Fernet(k.encode()))
        except ValueError:
            raise SecretKeyError(
                f"key {i} in {origin} is not a Fernet key (32 url-safe base64 bytes; "
                "'sluice secrets new-key' makes one)"
            ) from None
    return out


def key_file(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_keys(data_dir: Path, env_value: str | None, *, create: bool) -> list[Fernet]:
    if env_value:
        return parse_keys(env_value, "SLUICE_SECRET_KEY")
    path = key_file(data_dir)
    if not path.exists():
        if not create:
            raise SecretKeyError(
                f"no secrets key: {path} does not exist and SLUICE_SECRET_KEY is not set"
            )
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, Fernet.generate_key().decode() + "\n")
    return parse_keys(path.read_text(), str(path))


class SecretBox:
    def __init__(self, keys: list[Fernet]) -> None:
        self._fernet = MultiFernet(keys)

    @classmethod
    def for_data_dir(cls, data_dir: Path, env_value: str | None) -> SecretBox:
        return cls(load_keys(data_dir, env_value, create=True))

    @staticmethod
    def is_sealed(value: Any) -> bool:
        return isinstance(value, str) and value.startswith(PREFIX)

    def seal(self, value: Any) -> str:
        if self.is_sealed(value):
            return str(value)
        token = self._fernet.encrypt(json.dumps(value).encode())
        return PREFIX + token.decode()

    def open(self, value: Any) -> Any:
        if not self.is_sealed(value):
            return value
        try:
            plain = self._fernet.decrypt(str(value).removeprefix(PREFIX).encode())
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured secrets key(s)"
            ) from None
        return json.loads(plain)

    def rotate(self, value: Any) -> Any:
        """Re-encrypt a sealed value under the first key (plain values are sealed)."""
        if not self.is_sealed(value):
            return self.seal(value)
        try:
            token = self._fernet.rotate(str(value).removeprefix(PREFIX).encode())
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the configured secrets key(s)"
            ) from None
        return PREFIX + token.decode()

    def seal_config(self, config: dict[str, Any], secret: set[str]) -> dict[str, Any]:
        return {k: self.seal(v) if k in secret else v for k, v in config.items()}

    def open_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {k: self.open(v) for k, v in config.items()}
