"""Root pytest configuration.

Eight host CPU devices let the sharding tests run on any machine; the flag only
affects JAX's CPU platform and must be set before JAX is imported.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
