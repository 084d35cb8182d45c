"""``apot`` console entry point: dispatches to the sub-commands.

Each sub-command lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when chosen, so ``apot parity``
does not need the QAT extras and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "qat": ("apot_cli.qat", "train float vs APoT QAT models on the bundled digits data"),
    "parity": ("apot_cli.parity", "run the JAX/torch parity checks and print the report"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apot", description="APoT quantization tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ImportError as exc:  # a missing extra: say which, when chosen
            p.set_defaults(_import_error=exc)
    args = parser.parse_args(argv)
    if getattr(args, "_import_error", None) is not None:
        print(f"apot {args.command}: {args._import_error} (install the matching extra)", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


__all__ = ["COMMANDS", "main"]


if __name__ == "__main__":
    sys.exit(main())
