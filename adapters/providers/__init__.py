"""Model provider adapters, one module per provider, each with a ``create(settings)`` factory."""
