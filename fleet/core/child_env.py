"""The environment of child processes that parse untrusted input (uploaded models, Keras files).

Such a child runs code paths an attacker chooses (TFLM, TensorFlow, numpy loaders), so it must
not hold the server's secrets: it gets an allow-listed environment, never a copy of the
parent's. ``FLEET_KEK``, ``SECRET_KEY``, ``DATABASE_URL``, ``MQTT_*_PASSWORD``,
``METRICS_TOKEN`` and anything else not named here stay behind. Every such child is started
with :func:`child_environment`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# The checkout the children import (``python -m ota...``), whatever the parent's cwd is.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Names passed through when the parent has them: finding programs and libraries, locale,
# temporary files, Python's own switches, and thread limits of the numeric libraries.
ALLOWED_NAMES: frozenset[str] = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ",
    "TMPDIR", "TMP", "TEMP",
    "VIRTUAL_ENV", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONIOENCODING", "PYTHONUTF8",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
    "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES",
})


def child_environment(
    extra: Mapping[str, str] | None = None, *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the environment for a child process that handles untrusted input.

    Only :data:`ALLOWED_NAMES` are copied from ``parent`` (default: ``os.environ``);
    ``PYTHONPATH`` is the project root followed by the parent's own entries, so ``python -m
    ota.<module>`` resolves from any working directory; ``extra`` is added last (callers name
    what they pass on purpose).
    """
    source = os.environ if parent is None else parent
    env = {name: value for name, value in source.items() if name in ALLOWED_NAMES}
    env.setdefault("PATH", os.defpath)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT), source.get("PYTHONPATH", "")])
    )
    if extra:
        env.update(extra)
    return env
