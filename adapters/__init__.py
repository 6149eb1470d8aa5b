"""Provider-side services behind a security server (registries and generic adapters come with later work)."""
