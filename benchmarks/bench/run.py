"""Regenerate a committed bench report: `compress bench` with the given arguments, output under benchmarks/bench/.

    python benchmarks/bench/run.py cpu-default --threads 1        # the default suite, one thread per measurement
    python benchmarks/bench/run.py cpu-default-run2 --threads 1   # the same again, for compare_runs.py
    python benchmarks/bench/run.py cuda-default --device cuda     # on a GPU machine

The first argument names the report directory; everything after it is passed
to `compress bench` unchanged (with no variants, the default suite
configs/bench-default.yaml). Run it from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's compress, whatever is installed


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    from compress.cli import main as cli

    name, rest = argv[0], argv[1:]
    return cli(["bench", *rest, "-o", str(HERE / name), "--force"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
