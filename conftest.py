"""Root pytest configuration; the environment is set before JAX is imported.

* Eight host CPU devices let the sharding tests run on any machine; the flag
  only affects JAX's CPU platform.
* JAX's persistent compilation cache, shared by this process, its xdist
  workers and the subprocesses the tests start (notebook kernels, ``python
  -m apot_parity``): most of the suite's time is XLA compiling, and several
  processes compile the same programs. Every program is cached (JAX's
  default keeps only those that took over a second). The folder is a new
  temporary one per run, removed at exit, so each run starts cold; set
  ``APOT_TEST_JAX_CACHE=DIR`` to keep one between runs (JAX keys entries on
  the program, the jax/jaxlib versions and the XLA flags), or
  ``JAX_COMPILATION_CACHE_DIR`` to use JAX's own setting as it is.
"""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
    _cache = os.environ.get("APOT_TEST_JAX_CACHE")
    if not _cache:
        _cache = tempfile.mkdtemp(prefix="apot-jax-cache-")
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
