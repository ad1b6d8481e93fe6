"""TensorFlow's C++ start-up chatter is dropped from stderr; everything else passes."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

from leukoml.quiet import is_noise

SEEN = [  # printed by TF 2.21 on a CPU-only machine, verbatim
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796205391.788323   11818 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results\n",
    b"I0000 00:00:1796205391.788772   11818 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n",
    b"E0000 00:00:1796205398.463770   11818 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, "
    b"in other operations, rebuild TensorFlow with the appropriate compiler flags.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",  # at promotion's TFLite check
]


def test_the_start_up_lines_are_noise_and_real_errors_are_not():
    assert all(is_noise(line) for line in SEEN)
    for kept in (b"leukoml train: error: data: '/x' is not a folder\n",
                 b"Traceback (most recent call last):\n",
                 b"E0000 00:00:1.0   1 gpu_device.cc:9] out of memory\n",  # a real GPU error
                 b"12:00:01 WARNING leukoml.data: skipped 3 file(s)\n"):
        assert not is_noise(kept), kept


CHILD = """
import sys
from leukoml.quiet import filter_stderr
filter_stderr()
import tensorflow as tf
tf.config.list_physical_devices("GPU")
print("a line of ours", file=sys.stderr)
"""


def run_child(**env) -> list[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "LEUKOML_VERBOSE"}
    full.update(PYTHONPATH=str(REPO / "platform"), **env)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=full, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr.splitlines(keepends=True)


def test_importing_tensorflow_behind_the_filter_prints_only_our_lines():
    quiet = run_child()
    verbose = run_child(LEUKOML_VERBOSE="1")  # --verbose: the filter is not installed
    assert b"a line of ours\n" in quiet and not any(is_noise(line) for line in quiet)
    assert [line for line in verbose if not is_noise(line)] == quiet

