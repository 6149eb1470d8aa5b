"""Admin API keys with roles, and ``korpu ss api-key add|list|revoke``.

Pins: the ``korpu ss init`` key (``admin-api-key.sha256``) keeps working as key ``init`` with role admin; new keys
are stored only as hashes in a 0600 file; revocation takes effect at the next authentication, also in a process
that read the file before; a damaged key file refuses every key (fail closed); concurrent changes lose nothing;
the CLI shows a secret once and never lists one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import stat
from pathlib import Path

import pytest

from bridge.errors import ConfigError, InvalidApiKey, InvalidRequest, InvalidState, MissingApiKey, NotFound
from security_server.adminkeys import (
    KEYS_FILE,
    LEGACY_KEY_FILE,
    LEGACY_KEY_ID,
    AdminKeys,
    AdminRole,
    extract_secret,
    hash_secret,
    register_api_key_commands,
)
from security_server.config import CONFIG_NAME

INIT_SECRET = "init-secret-made-by-ss-init"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state directory as `korpu ss init` leaves it, as far as keys go."""
    (tmp_path / CONFIG_NAME).write_text("# placeholder: only its presence is checked\n")
    (tmp_path / LEGACY_KEY_FILE).write_text(hash_secret(INIT_SECRET))
    return tmp_path


def test_init_key_is_an_admin_key(state_dir: Path) -> None:
    """The legacy key file authenticates as key 'init' with role admin, which allows every role."""
    key = AdminKeys(state_dir).authenticate(INIT_SECRET)
    assert (key.key_id, key.roles, key.revoked) == (LEGACY_KEY_ID, frozenset({AdminRole.ADMIN}), None)
    assert [key.allows(role) for role in AdminRole] == [True, True, True]


def test_legacy_hash_given_by_the_runtime_wins(tmp_path: Path) -> None:
    """The runtime passes the hash it read at start; no file is needed then."""
    keys = AdminKeys(tmp_path, legacy_hash=hash_secret("from-runtime"))
    assert keys.authenticate("from-runtime").key_id == LEGACY_KEY_ID
    with pytest.raises(InvalidApiKey):
        keys.authenticate(INIT_SECRET)


def test_wrong_or_malformed_secret_is_invalid(state_dir: Path) -> None:
    """Unknown, non-ASCII, non-printable and over-long secrets are InvalidApiKey."""
    keys = AdminKeys(state_dir)
    for secret in ("nope", INIT_SECRET + "x", "init-secret\u00e9", "a\tb", "k" * 300):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(secret)


def test_created_key_stored_as_hash_in_private_file(state_dir: Path) -> None:
    """A new key authenticates with its roles; the file is 0600 and holds its hash, never the secret."""
    keys = AdminKeys(state_dir)
    key_id, secret = keys.create([AdminRole.AUDITOR], "DPA: Aysel")
    assert secret.startswith(f"{key_id}.")
    key = keys.authenticate(secret)
    assert (key.key_id, key.roles, key.label) == (key_id, frozenset({AdminRole.AUDITOR}), "DPA: Aysel")
    assert (key.allows(AdminRole.AUDITOR), key.allows(AdminRole.OBSERVER), key.allows(AdminRole.ADMIN)) == (
        True,
        False,
        False,
    )
    path = state_dir / KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    assert secret.partition(".")[2] not in text
    assert json.loads(text)["keys"][0]["sha256"] == hash_secret(secret)


def test_revocation_reaches_a_reader_that_cached_the_file(state_dir: Path) -> None:
    """A running server (its own AdminKeys) refuses a key at the first request after the CLI revoked it."""
    server = AdminKeys(state_dir)
    cli = AdminKeys(state_dir)
    key_id, secret = cli.create(["observer"], "monitoring")
    assert server.authenticate(secret).key_id == key_id
    revoked = cli.revoke(key_id)
    assert revoked.revoked is not None
    with pytest.raises(InvalidApiKey):
        server.authenticate(secret)
    assert server.authenticate(INIT_SECRET).key_id == LEGACY_KEY_ID


def test_init_key_can_be_revoked(state_dir: Path) -> None:
    """Revoking 'init' is recorded in admin-keys.json; the legacy file stays (the runtime reads it)."""
    keys = AdminKeys(state_dir)
    keys.revoke(LEGACY_KEY_ID)
    with pytest.raises(InvalidApiKey):
        AdminKeys(state_dir).authenticate(INIT_SECRET)
    assert (state_dir / LEGACY_KEY_FILE).exists()
    with pytest.raises(InvalidState):
        keys.revoke(LEGACY_KEY_ID)


def test_revoke_unknown_or_twice(state_dir: Path) -> None:
    """Unknown ids are NotFound; revoking twice is InvalidState."""
    keys = AdminKeys(state_dir)
    with pytest.raises(NotFound):
        keys.revoke("k0000")
    key_id, _ = keys.create(["auditor"])
    keys.revoke(key_id)
    with pytest.raises(InvalidState):
        keys.revoke(key_id)


def test_init_is_not_found_without_a_legacy_key(tmp_path: Path) -> None:
    """Without admin-api-key.sha256 there is no key 'init' to revoke."""
    with pytest.raises(NotFound):
        AdminKeys(tmp_path).revoke(LEGACY_KEY_ID)


@pytest.mark.parametrize(
    "content",
    [
        b"{broken",
        b'{"format": "other/1", "keys": []}',
        b'{"format": "korpu-admin-keys/1", "keys": [{"id": "k1"}]}',
        b'{"format": "korpu-admin-keys/1", "legacy_revoked": null, "keys": [{"id": "k1", "label": "",'
        b' "roles": ["root"], "created": "", "revoked": null, "sha256": "' + b"0" * 64 + b'"}]}',
    ],
)
def test_damaged_key_file_refuses_every_key(state_dir: Path, content: bytes) -> None:
    """A key file that cannot be read refuses all keys, init included: revocations are unknown then."""
    (state_dir / KEYS_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        AdminKeys(state_dir).authenticate(INIT_SECRET)
    assert str(state_dir) not in info.value.message  # the message may reach an unauthenticated caller


def test_create_validates_roles_and_label(state_dir: Path) -> None:
    """No role, an unknown role or a non-printable label are InvalidRequest."""
    keys = AdminKeys(state_dir)
    for roles, label in (([], "x"), (["root"], "x"), (["auditor"], "line\nbreak"), (["auditor"], "x" * 256)):
        with pytest.raises(InvalidRequest):
            keys.create(roles, label)


def test_concurrent_creates_lose_nothing(state_dir: Path) -> None:
    """Read-modify-write under the lock: eight creates at once leave eight keys."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: AdminKeys(state_dir).create(["auditor"], f"k{i}"), range(8)))
    listed = {k.key_id for k in AdminKeys(state_dir).list_keys()}
    assert listed == {LEGACY_KEY_ID} | {key_id for key_id, _ in made}


def test_extract_secret_from_headers() -> None:
    """X-API-Key wins; Authorization: Bearer (any case) works; nothing is MissingApiKey; junk is InvalidApiKey."""
    assert extract_secret({"X-API-Key": " s1 ", "Authorization": "Bearer s2"}) == "s1"
    assert extract_secret({"Authorization": "bearer s2"}) == "s2"
    with pytest.raises(MissingApiKey):
        extract_secret({})
    with pytest.raises(MissingApiKey):
        extract_secret({"Authorization": "Basic dXNlcjpwdw=="})
    with pytest.raises(InvalidApiKey):
        extract_secret({"X-API-Key": "bad\udcff"})


# korpu ss api-key ----------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="korpu ss")
    register_api_key_commands(parser.add_subparsers(dest="ss_command", required=True))
    args = parser.parse_args(list(argv))
    result: int = args.handler(args)
    return result


def test_cli_add_list_revoke(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`add` prints the secret once; list shows ids, roles and labels but no secret; revoke stops the key."""
    assert run_cli("api-key", "add", "--dir", str(state_dir), "--role", "auditor", "--label", "DPA") == 0
    out = capsys.readouterr().out
    secret = out.rsplit(": ", 1)[1].strip()
    key = AdminKeys(state_dir).authenticate(secret)
    assert key.roles == frozenset({AdminRole.AUDITOR})

    assert run_cli("api-key", "list", "--dir", str(state_dir), "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["id"], k["roles"], k["revoked"]) for k in listed] == [
        (LEGACY_KEY_ID, ["admin"], None),
        (key.key_id, ["auditor"], None),
    ]
    assert run_cli("api-key", "list", "--dir", str(state_dir)) == 0
    table = capsys.readouterr().out
    assert key.key_id in table and "DPA" in table and secret not in table

    assert run_cli("api-key", "revoke", "--dir", str(state_dir), key.key_id) == 0
    assert f"admin API key {key.key_id} revoked" in capsys.readouterr().out
    with pytest.raises(InvalidApiKey):
        AdminKeys(state_dir).authenticate(secret)


def test_cli_add_to_key_file(state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--key-file writes the secret (0600) and keeps it off stdout; several --role flags combine."""
    key_file = tmp_path / "out" / "auditor.key"
    argv = ("api-key", "add", "--dir", str(state_dir), "--role", "auditor", "--role", "observer")
    assert run_cli(*argv, "--key-file", str(key_file)) == 0
    secret = key_file.read_text()
    assert secret not in capsys.readouterr().out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert AdminKeys(state_dir).authenticate(secret).roles == frozenset({AdminRole.AUDITOR, AdminRole.OBSERVER})


def test_cli_refuses_a_directory_that_is_no_security_server(tmp_path: Path) -> None:
    """Without server.yaml the directory is refused with a ConfigError (no stray key file appears)."""
    with pytest.raises(ConfigError):
        run_cli("api-key", "add", "--dir", str(tmp_path), "--role", "admin")
    assert not (tmp_path / KEYS_FILE).exists()


def test_cli_rejects_unknown_roles(state_dir: Path) -> None:
    """The parser refuses a role that does not exist (usage error, exit code 2)."""
    with pytest.raises(SystemExit) as info:
        run_cli("api-key", "add", "--dir", str(state_dir), "--role", "root")
    assert info.value.code == 2
