"""Adapters: the edges of tierbot (chat surfaces, model providers)."""
