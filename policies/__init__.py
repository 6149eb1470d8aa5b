"""The permission policy engine: pure access decisions with reasons (filled in with message exchange)."""
