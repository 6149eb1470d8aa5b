"""Wire and configuration formats: XSD, OpenAPI and JSON Schema files, loadable with :func:`path`."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Absolute path of the schema file ``name`` shipped in this package."""
    return _HERE / name
