"""Runs every benchmark in bench/ (``make bench``; ``--quick`` for smoke sizes)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

SKIP = {"common", "run"}


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if m.name not in SKIP)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    failed = []
    for name in names():
        print(f"== bench.{name} {' '.join(args)}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}", *args]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
