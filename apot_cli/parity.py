"""``apot parity``: the parity report of :mod:`apot_parity` (same options as
``python -m apot_parity check``)."""

from apot_parity.__main__ import add_check_arguments as add_arguments
from apot_parity.__main__ import run_check as run

__all__ = ["add_arguments", "run"]
