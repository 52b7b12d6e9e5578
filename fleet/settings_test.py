"""Test settings: the real settings with only what makes tests fast or isolated changed."""

import atexit
import os
import shutil
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
    # A file (WAL, synchronous=NORMAL from the real settings), not an in-memory database:
    # integration tests run the real worker as a subprocess, which must see the same data.
    # One folder per run, so parallel runs never share a database.
    _test_db_dir = tempfile.mkdtemp(prefix="fleet-test-db-")
    atexit.register(shutil.rmtree, _test_db_dir, ignore_errors=True)
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_test_db_dir, "test.sqlite3")}
