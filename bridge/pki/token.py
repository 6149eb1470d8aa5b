"""A software token: private keys encrypted under a PIN, their certificates, and an index, in one directory.

Layout of a token directory (mode 0700, every file mode 0600)::

    index.json           {"version": 1, "keys": {label: {"algorithm", "usage", "created"}}}
    canary.key.pem       a throwaway key encrypted under the PIN, decrypted by open() to check the PIN
    <label>.key.pem      PKCS#8 "ENCRYPTED PRIVATE KEY" (cryptography's BestAvailableEncryption)
    <label>.cert.pem     the key's certificate, once one is stored

No private key is ever written unencrypted.  Each write goes to a temporary file in the same directory and is
renamed over the target, so a crash leaves either the old or the new file, never half of one.  Decrypted keys
are kept in memory after first use because each decryption runs the PIN through a key derivation function (PBKDF2).

Labels are restricted to ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` so that a label can never name a path outside the
directory or collide with ``index.json`` and the canary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import KeyNotFound, TokenError, TokenNotInitialized, WrongPin
from bridge.fsutil import write_atomic
from bridge.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    algorithm_of,
    as_private_key,
    generate_private_key,
)

__all__ = ["MIN_PIN_LENGTH", "SoftwareToken"]

#: Shortest PIN :meth:`SoftwareToken.init` accepts.
MIN_PIN_LENGTH = 6

_INDEX = "index.json"
_CANARY = "canary.key.pem"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FORMAT_VERSION = 1


def _check_label(label: str) -> str:
    if not isinstance(label, str) or _LABEL.fullmatch(label) is None or label.endswith((".pem", ".json")):
        raise TokenError(f"invalid key label {label!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return label


class SoftwareToken:
    """A PIN-protected key store in a directory.  Create with :meth:`init`, reopen with :meth:`open`."""

    def __init__(self, directory: Path, pin: str, index: dict[str, dict[str, str]]) -> None:
        # Use init() or open(); the constructor trusts that the PIN has been checked.
        self.directory = directory
        self._pin = pin.encode()
        self._index = index
        self._keys: dict[str, PrivateKey] = {}
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.RLock()

    # Creating and opening ------------------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: Path | str, pin: str) -> SoftwareToken:
        """Initialise an empty token in ``directory`` (created if missing) protected by ``pin``.

        Raises :class:`TokenError` if the directory already holds a token or the PIN is shorter than
        :data:`MIN_PIN_LENGTH`.
        """
        directory = Path(directory)
        if not isinstance(pin, str) or len(pin) < MIN_PIN_LENGTH:
            raise TokenError(f"the token PIN must be at least {MIN_PIN_LENGTH} characters long")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if (directory / _INDEX).exists() or (directory / _CANARY).exists():
            raise TokenError("the token is already initialised")
        token = cls(directory, pin, {})
        canary = generate_private_key(KeyAlgorithm.EC_P256)
        write_atomic(directory / _CANARY, token._encrypt(canary), mode=0o600)
        # The index is written last: its presence is what marks the token as initialised.
        token._save_index()
        return token

    @classmethod
    def open(cls, directory: Path | str, pin: str) -> SoftwareToken:
        """Open the token in ``directory``, checking ``pin`` at once.

        Raises :class:`TokenNotInitialized` if there is no token there and :class:`WrongPin` if the PIN does not
        decrypt the token's canary key.
        """
        directory = Path(directory)
        index_path = directory / _INDEX
        if not index_path.is_file() or not (directory / _CANARY).is_file():
            raise TokenNotInitialized("the token has not been initialised")
        try:
            raw = json.loads(index_path.read_text(encoding="utf-8"))
            index = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in raw["keys"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError("the token index is unreadable") from exc
        token = cls(directory, pin, index)
        token._decrypt((directory / _CANARY).read_bytes())
        return token

    # Keys -----------------------------------------------------------------------------------------------------

    def generate_key(
        self, label: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256, *, usage: str = "general"
    ) -> PublicKey:
        """Generate a key under ``label`` and return its public key; raises :class:`TokenError` if it exists."""
        return self.import_key(label, generate_private_key(KeyAlgorithm(algorithm)), usage=usage)

    def import_key(self, label: str, key: PrivateKey, *, usage: str = "general") -> PublicKey:
        """Store an existing private key under ``label`` (encrypted); raises :class:`TokenError` if it exists."""
        _check_label(label)
        with self._lock:
            if label in self._index:
                raise TokenError(f"the token already has a key labelled {label!r}")
            write_atomic(self._key_path(label), self._encrypt(key), mode=0o600)
            self._index[label] = {
                "algorithm": str(algorithm_of(key)),
                "usage": usage,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            self._save_index()
            self._keys[label] = key
        return key.public_key()

    def private_key(self, label: str) -> PrivateKey:
        """The private key labelled ``label``; raises :class:`KeyNotFound` if there is none."""
        with self._lock:
            key = self._keys.get(label)
            if key is None:
                if label not in self._index:
                    raise KeyNotFound(f"no key labelled {label!r} in the token")
                key = self._decrypt(self._key_path(label).read_bytes())
                self._keys[label] = key
            return key

    def public_key(self, label: str) -> PublicKey:
        """The public key labelled ``label``; raises :class:`KeyNotFound` if there is none."""
        return self.private_key(label).public_key()

    def labels(self) -> list[str]:
        """The labels of all keys, sorted."""
        with self._lock:
            return sorted(self._index)

    def has_key(self, label: str) -> bool:
        """Whether a key labelled ``label`` exists."""
        with self._lock:
            return label in self._index

    def key_info(self, label: str) -> dict[str, str]:
        """The index entry of ``label`` (``algorithm``, ``usage``, ``created``); raises :class:`KeyNotFound`."""
        with self._lock:
            if label not in self._index:
                raise KeyNotFound(f"no key labelled {label!r} in the token")
            return dict(self._index[label])

    # Certificates ---------------------------------------------------------------------------------------------

    def store_certificate(self, label: str, cert: x509.Certificate) -> None:
        """Store (or replace) the certificate of key ``label``; it must certify that key."""
        public = self.public_key(label)
        if cert.public_key() != public:
            raise TokenError(f"the certificate does not belong to the key labelled {label!r}")
        write_atomic(self._cert_path(label), cert.public_bytes(serialization.Encoding.PEM), mode=0o600)
        self._certs[label] = cert

    def certificate(self, label: str) -> x509.Certificate | None:
        """The certificate stored for ``label``, or ``None`` if there is none yet.

        A certificate once read is kept in memory: the proxies ask for it on every message, and reading and parsing
        a file there would be blocking I/O on the hot path.  A missing one is looked for again on each call, so a
        certificate installed by another process (``korpu ss status``) is picked up.
        """
        cached = self._certs.get(label)
        if cached is not None:
            return cached
        _check_label(label)
        try:
            data = self._cert_path(label).read_bytes()
        except FileNotFoundError:
            return None
        cert = x509.load_pem_x509_certificate(data)
        self._certs[label] = cert
        return cert

    # Internals ------------------------------------------------------------------------------------------------

    def _key_path(self, label: str) -> Path:
        return self.directory / f"{_check_label(label)}.key.pem"

    def _cert_path(self, label: str) -> Path:
        return self.directory / f"{_check_label(label)}.cert.pem"

    def _encrypt(self, key: PrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._pin),
        )

    def _decrypt(self, pem: bytes) -> PrivateKey:
        if b"ENCRYPTED PRIVATE KEY" not in pem:
            # Fail closed: a plaintext key in the token means someone tampered with it.
            raise TokenError("a key file in the token is not encrypted")
        try:
            key = serialization.load_pem_private_key(pem, password=self._pin)
        except ValueError as exc:
            # cryptography reports a failed decryption (wrong PIN) as ValueError.
            raise WrongPin("the PIN does not open the token") from exc
        return as_private_key(key)

    def _save_index(self) -> None:
        body: dict[str, Any] = {"version": _FORMAT_VERSION, "keys": self._index}
        write_atomic(self.directory / _INDEX, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)
