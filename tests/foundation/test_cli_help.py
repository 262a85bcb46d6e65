"""``branchops --help`` stays fast: the command line imports none of the heavy libraries the commands use
(each command imports what it needs when it runs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("git", "pydantic", "yaml", "kfp", "tensorflow", "numpy", "pandas", "requests", "rich", "tqdm")

SHOW_IMPORTS = """
import json, sys
from branchops.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["mr", "--help"], ["serve", "start", "--help"]])
def test_help_imports_no_heavy_library(args: list[str]):
    done = subprocess.run(
        [sys.executable, "-c", SHOW_IMPORTS, *args], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Usage:" in done.stdout
    imported = {name.split(".")[0] for name in json.loads(done.stderr.strip().splitlines()[-1])}
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
