"""Convert one Keras model in a child process and report progress as JSON lines on stdout.

Run by the worker as ``python -m ota.jobs.convert_child KERAS DATA OUT``: TensorFlow (3-4 s
and ~540 MB to import) is loaded only here, never in the worker or the web server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str]) -> int:
    """Convert ``argv = [keras_path, data_path, out_path]``; 0 on success."""
    from ota.conversion.keras_to_tflite import ConversionError, convert_keras_to_int8

    keras_path, data_path, out_path = argv
    try:
        result = convert_keras_to_int8(
            keras_path, data_path,
            on_progress=lambda fraction, message: _emit(progress=fraction, message=message),
        )
    except ConversionError as exc:
        _emit(error=exc.reason, detail=exc.detail)
        return 1
    except Exception as exc:  # any TensorFlow failure is the user's model's problem: report it
        _emit(error="conversion_failed", detail=f"{type(exc).__name__}: {exc}")
        return 1
    Path(out_path).write_bytes(result.tflite_bytes)
    _emit(done=True, metrics=result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
