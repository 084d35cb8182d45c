"""JAX/torch parity suite: every check written once against a framework binding."""
