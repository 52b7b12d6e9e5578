"""Model registry, validation, packaging, signing and rollouts."""
