"""The `krubench-data` command: fetch the real data sets ahead of time (e.g. on a cluster's login
node), check them, or show where krubench looks for them.

    krubench-data download all                  # or pixel_mnist, ptb_char, music, jsb, ...
    krubench-data verify ptb_char --data-dir /shared/krubench-data
    krubench-data where
"""
from __future__ import annotations

import argparse
import logging
import sys

from .fetch import DataError, ensure, verify
from .roots import CACHE_ENV, DATA_ENV, cache_dir, data_dir
from .sources import files_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="krubench-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("download", "download the missing files and check every file's checksum"),
                          ("verify", "check the files' checksums; download nothing")):
        p = sub.add_parser(command, help=text)
        p.add_argument("names", nargs="+", metavar="NAME",
                       help="all | pixel_mnist (mnist) | ptb_char | music | jsb | piano | nottingham | musedata")
        p.add_argument("--data-dir", help=f"data root (default: ${DATA_ENV}, else <cache>/data)")
    sub.add_parser("where", help="print the data root and the cache krubench uses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "where":
        print(f"data root: {data_dir()}  (config data_dir=..., or ${DATA_ENV})")
        print(f"cache:     {cache_dir()}  (${CACHE_ENV}; derived files such as decompressed MNIST)")
        return 0
    root = data_dir(args.data_dir)
    try:
        for name in args.names:
            files = files_for(name)
            if args.command == "download":
                ensure(name, files, root)
                for f in files:
                    print(f"ok  {root / f.path}")
            elif problems := verify_each(name, files, root):
                for problem in problems:
                    print(f"krubench-data: {problem}", file=sys.stderr)
                return 1
    except (DataError, ValueError) as e:
        print(f"krubench-data: {e}", file=sys.stderr)
        return 1
    return 0


def verify_each(name: str, files, root) -> list[str]:
    """Check every file of `name` (printing "ok" for the good ones); a line per missing or corrupt file."""
    missing, problems = [], []
    for f in files:
        if not (root / f.path).is_file():
            missing.append(f.path)
            continue
        try:
            verify(root, f)
            print(f"ok  {root / f.path}")
        except DataError as e:
            problems.append(str(e))
    if missing:
        problems.insert(0, f"{name}: missing from {root}: {missing}; run `krubench-data download {name}`")
    return problems


if __name__ == "__main__":
    sys.exit(main())
