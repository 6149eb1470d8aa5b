"""The federation PKI, client side and shared parts (the CA, OCSP responder and TSA live in :mod:`catalog`).

* :mod:`bridge.pki.keys` — key generation, the signature scheme for each key type, certificate fingerprints.
* :mod:`bridge.pki.token` — the PIN-protected software token holding private keys and their certificates.
* :mod:`bridge.pki.csr` — making CSRs, and admitting untrusted ones.
* :mod:`bridge.pki.profile` — the certificate profile (``docs/pki.md``): subjects, extensions, checks, chains.
* :mod:`bridge.pki.ocsp` — OCSP requests and response verification (RFC 6960).
* :mod:`bridge.pki.tsp` — timestamp requests and token verification (RFC 3161).
"""
