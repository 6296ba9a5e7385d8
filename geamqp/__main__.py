"""Command line: ``python -m geamqp perf [options]`` (see ``--help``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m geamqp perf [options]   (python -m geamqp perf --help)")
        return 0 if args else 2
    if args[0] == "perf":
        from .perf import main as perf_main

        return perf_main(args[1:])
    print(f"unknown command {args[0]!r}; try: python -m geamqp perf --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
