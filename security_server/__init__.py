"""The security server an agency runs: global-configuration client, key token, admin API and (next) the proxies."""
