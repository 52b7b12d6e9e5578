"""Staged rollouts: waves, gates on failures and ML health, pause/resume/abort/rollback."""
