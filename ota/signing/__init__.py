"""OTA signing keys: Ed25519, encrypted at rest, with rotation records."""
