"""``python -m stepstream.avro freeze <Name>``: keep a record's current schema as its next earlier version.

Run it from the repository root before changing ``schemas/stepstream.<Name>.avsc``; ``schemas/README.md``
says why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepstream.avro.schemas import SchemaError, freeze


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepstream.avro")
    commands = parser.add_subparsers(dest="command", required=True)
    freeze_parser = commands.add_parser("freeze", help="keep a record's current shape as its next earlier version")
    freeze_parser.add_argument("name", help="the record name, like RunStarted")
    freeze_parser.add_argument("--directory", type=Path, default=Path("schemas"), help="default: ./schemas")
    options = parser.parse_args(arguments)
    try:
        print(freeze(options.name, options.directory))
    except SchemaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
