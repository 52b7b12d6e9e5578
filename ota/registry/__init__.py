"""Model registry: models, immutable versions, artifact storage."""
