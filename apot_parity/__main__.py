"""``python -m apot_parity``: the parity report, without the apot CLI.

``python -m apot_parity [check] [--backends ...] [--configs 4:2:s,...] [--json
PATH] [--no-golden] [--no-live]`` checks the golden vectors on every backend
present and compares each backend live against torch on the CPU; ``python -m apot_parity generate
[--out DIR]`` recomputes the golden files with torch. ``apot parity`` is the
same check.
"""

from __future__ import annotations

import argparse
import sys
import time

from apot_parity import golden
from apot_parity.backends import ALL_BACKENDS, parse_backends
from apot_parity.report import format_table, run_checks, totals, write_json


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the check (shared with ``apot parity``)."""
    parser.add_argument("--backends", default="all",
                        help=f"comma-separated subset of {', '.join(ALL_BACKENDS)} (or jax, torch, all)")
    parser.add_argument("--configs", type=_configs, metavar="B:K:S,...",
                        help="only these configurations: b:k:s (signed) or b:k:u (unsigned), comma-separated, "
                             "for example 4:2:s,3:1:u (default: all 40; the observer streams are always checked)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--no-golden", action="store_true", help="skip the golden-vector checks")
    parser.add_argument("--no-live", action="store_true",
                        help="skip the live comparisons against torch on the CPU")
    parser.add_argument("--golden-dir", default=str(golden.GOLDEN_DIR),
                        help="folder of the golden files and their manifest (default: the packaged one)")


def _configs(spec: str) -> tuple[tuple[int, int, bool], ...]:
    try:
        return golden.parse_configs(spec)
    except ValueError as exc:  # argparse reports an ArgumentTypeError with its message
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_check(args: argparse.Namespace) -> int:
    """Run the check, print the table and totals; 1 if anything failed."""
    try:
        backends = parse_backends(args.backends)
    except ValueError as exc:
        print(f"apot parity: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        results = run_checks(backends, golden_checks=not args.no_golden, live=not args.no_live,
                             golden_dir=args.golden_dir, configs=args.configs)
    except golden.GoldenFileError as exc:
        print(f"apot parity: {exc}", file=sys.stderr)
        return 1
    except golden.UnknownConfigError as exc:  # a --configs entry without a stored case
        print(f"apot parity: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(format_table(results))
    t = totals(results)
    print(f"\n{t['checks']} checks, {t['comparisons']} comparisons: {t['passed']} passed, {t['failed']} failed, "
          f"{t['skipped']} skipped ({elapsed:.1f} s)")
    if args.json:
        write_json(args.json, results, {"elapsed_s": elapsed})
        print(f"wrote {args.json}")
    return 1 if t["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "generate", "-h", "--help"):
        argv.insert(0, "check")
    parser = argparse.ArgumentParser(prog="python -m apot_parity", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_check_arguments(sub.add_parser("check", help="golden and live checks on every backend present (default)"))
    gen = sub.add_parser("generate", help="recompute the golden files with torch on the CPU")
    gen.add_argument("--out", default=str(golden.GOLDEN_DIR), help="output folder (default: the packaged one)")
    args = parser.parse_args(argv)
    if args.command == "generate":
        for path in golden.generate(args.out):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
