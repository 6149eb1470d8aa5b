"""Körpü's shared core: identifiers, errors, PKI helpers, global configuration and configuration loading.

Pure code over bytes and dataclasses; no aiohttp server code lives here.
"""

__version__ = "0.1.0"
