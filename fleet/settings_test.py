"""Test settings: the real settings with only what makes tests fast or isolated changed."""

import os

import tempfile

os.environ.setdefault("FLEET_DEBUG", "1")
# A per-run key-encryption key and artifact folder: nothing a test writes outlives the run.
os.environ.setdefault("FLEET_KEK", "test-kek-" + os.urandom(16).hex())
os.environ.setdefault("ARTIFACT_ROOT", tempfile.mkdtemp(prefix="fleet-artifacts-"))

from fleet.settings import *  # noqa: E402,F403
from fleet.settings import DATABASES  # noqa: E402

# Fast hashing: tests create many users; the production hasher is deliberately slow.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": None}  # in-memory
