"""Keep TensorFlow's C++ start-up chatter off a new user's console.

On a CPU-only machine TensorFlow prints, before any Python code can stop it
(absl writes "before InitializeLog" straight to file descriptor 2), lines
such as `I0000 ... oneDNN custom operations are on` and `E0000 ...
failed call to cuInit: ... CUDA error`, which read as failures. `filter_stderr`
passes file descriptor 2 through a thread that drops exactly those lines
and forwards everything else unchanged; `--verbose` skips it.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:. ]+\d+ \w+\.cc:\d+\]"  # absl INFO / WARNING lines of the C++ runtime
    rb"|E\d{4} [\d:. ]+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)")  # the TFLite export check


def is_noise(line: bytes) -> bool:
    return bool(_NOISE.match(line))


def filter_stderr() -> None:
    """Route fd 2 through a filter thread for the rest of this process."""
    if os.environ.get("LEUKOML_VERBOSE") or getattr(filter_stderr, "installed", False):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                if not is_noise(line):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="leukoml-stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:  # at exit: close our end so the pump sees EOF, then let it finish
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)
        thread.join(timeout=5)

    atexit.register(drain)
    filter_stderr.installed = True
