"""Run one component locally: ``python -m components NAME --params '{"json": ...}'``.

The result (a JSON object) is printed on the last line of stdout; logs go to stderr.  Exit codes:
0 success, 7 bad input data (message on stderr), 1 any other failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from components import COMPONENTS
from components.common.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=COMPONENTS)
    parser.add_argument("--params", default="{}", help="JSON object of keyword arguments for run()")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        print(f"error: --params is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("error: --params must be a JSON object of keyword arguments", file=sys.stderr)
        return 2
    module = importlib.import_module(f"components.{args.name}")
    try:
        result = module.run(**params)
    except DataError as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return 7
    except TypeError as exc:
        # wrong or missing keyword arguments for run(): a usage error, not a crash
        if "run()" in str(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    except Exception as exc:
        logging.getLogger("components").debug("failure", exc_info=True)
        print(f"error: {args.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
