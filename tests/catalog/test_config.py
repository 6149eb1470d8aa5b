"""central.yaml validation (catalog.config): URLs and durations are refused with messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from catalog.config import CONFIG_NAME, load_central_config


def _load(tmp_path: Path, text: str) -> str:
    (tmp_path / CONFIG_NAME).write_text("instance: AZ\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_central_config(tmp_path)
    return info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("public_url: http://\n", "public_url must be an http:// or https:// URL with a host"),
        (
            "public_url: http://c\nocsp_url: ftp://ocsp.example\n",
            "ocsp_url must be an http:// or https:// URL with a host",
        ),
        ("public_url: http://c\nocsp_url: ocsp.example/ocsp\n", "ocsp_url must be an http:// or https:// URL"),
        (
            "public_url: http://c\ntsa_url: 'javascript:alert(1)'\ntsa_certificate: tsa.pem\n",
            "tsa_url must be an http:// or https:// URL with a host",
        ),
        ("public_url: http://c\ntsa_url: 'http://t:99x'\ntsa_certificate: tsa.pem\n", "tsa_url is not a valid URL"),
    ],
)
def test_urls_must_be_http(tmp_path: Path, text: str, message: str) -> None:
    """public_url, ocsp_url and tsa_url must be absolute http(s) URLs with a host."""
    assert message in _load(tmp_path, text)


@pytest.mark.parametrize(
    "key", ["expiry_seconds", "refresh_seconds", "timestamping_interval_seconds", "ocsp_freshness_seconds"]
)
def test_durations_must_be_positive(tmp_path: Path, key: str) -> None:
    """A negative duration says "must be positive", under the globalconf section."""
    message = _load(tmp_path, f"public_url: http://c\nglobalconf:\n  {key}: -1\n")
    assert message.endswith(f"{CONFIG_NAME}: globalconf: {key} must be positive")


def test_valid_external_services_load(tmp_path: Path) -> None:
    """Valid external OCSP and TSA URLs are accepted as given."""
    (tmp_path / CONFIG_NAME).write_text(
        "instance: AZ\npublic_url: https://central.example.az/\nocsp_url: http://ocsp.example.az:8080/ocsp\n"
        "tsa_url: https://tsa.example.az/tsa\ntsa_certificate: tsa.pem\n",
        encoding="utf-8",
    )
    config = load_central_config(tmp_path)
    assert (config.effective_ocsp_url, config.effective_tsa_url) == (
        "http://ocsp.example.az:8080/ocsp",
        "https://tsa.example.az/tsa",
    )
