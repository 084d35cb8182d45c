"""Root pytest configuration; the environment is set before JAX is imported.

* Eight host CPU devices let the sharding tests run on any machine; the flag
  only affects JAX's CPU platform.
* Compilation caches shared by this process, its xdist workers and the
  subprocesses the tests start (notebook kernels, ``python -m
  apot_parity``): JAX's persistent compilation cache (every program; JAX's
  default keeps only those that took over a second) and Inductor's
  (``torch.compile``). Most of the suite's time is compiling, and several
  processes compile the same programs. The folder is a new temporary one
  per run, removed at exit, so each run starts cold, as on a clean machine;
  ``APOT_TEST_CACHE=DIR`` keeps one between runs (both key their entries on
  the program, the library versions and the compiler flags). A
  ``JAX_COMPILATION_CACHE_DIR`` or ``TORCHINDUCTOR_CACHE_DIR`` already set
  is used as it is.
"""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

if "APOT_TEST_CACHE_IN_USE" not in os.environ:  # set once: xdist workers inherit the controller's
    _cache = os.environ.get("APOT_TEST_CACHE")
    if not _cache:
        _cache = tempfile.mkdtemp(prefix="apot-test-cache-")
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["APOT_TEST_CACHE_IN_USE"] = _cache
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_cache, "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_cache, "inductor"))
