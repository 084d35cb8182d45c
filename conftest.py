"""Root pytest configuration; the environment is set before JAX is imported.

* Eight host CPU devices let the sharding tests run on any machine; the flag
  only affects JAX's CPU platform.
* Compilation caches shared by this process, its xdist workers, the
  subprocesses the tests start (notebook kernels, ``python -m
  apot_parity``) and later runs: JAX's persistent compilation cache (every
  program; JAX's default keeps only those that took over a second) and
  Inductor's (``torch.compile``). Most of the suite's time is compiling the
  same programs again. The folder is ``.pytest_cache/apot-compilation``
  (both caches key their entries on the program, the library versions and
  the compiler flags, so a change of code or version compiles anew);
  ``APOT_TEST_CACHE=DIR`` puts it elsewhere, and ``APOT_TEST_CACHE=fresh``
  uses a new temporary folder, removed at exit: a cold run, as on a clean
  machine. A ``JAX_COMPILATION_CACHE_DIR`` or ``TORCHINDUCTOR_CACHE_DIR``
  already set is used as it is.
"""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

if "APOT_TEST_CACHE_IN_USE" not in os.environ:  # set once: xdist workers inherit the controller's
    _cache = os.environ.get("APOT_TEST_CACHE") or os.path.join(os.path.dirname(__file__), ".pytest_cache",
                                                                "apot-compilation")
    if _cache == "fresh":
        _cache = tempfile.mkdtemp(prefix="apot-test-cache-")
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["APOT_TEST_CACHE_IN_USE"] = _cache
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_cache, "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_cache, "inductor"))


# Longest first: with ``--dist worksteal`` each worker starts on its own
# contiguous share of the collected order and then takes tests from the end
# of the other's queue. Starting the ``slow`` (and notebook) tests first
# leaves short ones at every queue's end, so the workers finish together: in
# collection order a 31 s notebook ran last and the other worker idled 22 s.
# The sort is stable, so tests keep their order within each group.
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None and item.get_closest_marker("notebook") is None)
