"""The audit log: who changed what, when, with before/after snapshots."""
