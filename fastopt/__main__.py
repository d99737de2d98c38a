"""``python -m fastopt info``: what this fastopt runs (fastopt.show_config), for bug reports."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._config import collect, format_config, to_json


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastopt",
        description="Information about this installation of fastopt.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info", help="show the version, SIMD level, threads, MPI and BLAS libraries",
        description="Show what fastopt runs in this environment: the version, the SIMD level "
                    "and NumPy's name for it, the square-root method, threads, flushing of "
                    "subnormals, the MPI library (MPI is not started) and the BLAS and OpenMP "
                    "thread pools threadpoolctl finds. The same as fastopt.show_config().")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    arguments = parser.parse_args(argv)
    # Only "info" exists; this process does nothing else, so it may load mpi4py.MPI to name
    # the MPI library (without starting MPI).
    config = collect(load_mpi=True)
    print(to_json(config) if arguments.json else format_config(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
