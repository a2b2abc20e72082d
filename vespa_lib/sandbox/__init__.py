"""Synthetic worlds and throw-away servers: the synthetic snapshot, local PostgreSQL, the demo."""
