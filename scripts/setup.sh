#!/usr/bin/env bash
# Sets up branchops on a fresh Debian/Ubuntu machine: a virtualenv in .venv with branchops and the
# libraries its stages use. With --test-tools it also installs what the test suite exercises for real
# (buildah, podman and a local registry; a Python base image made with mmdebstrap; Prism with GitHub's
# API description; groovy; Chromium and chromedriver), via .ci/setup.d/.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_tools=0
[ "${1:-}" = "--test-tools" ] && with_test_tools=1

if [ "$with_test_tools" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then echo "--test-tools installs system packages: run as root" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  for script in .ci/setup.d/*.sh; do
    [ -e "$script" ] || continue
    echo "== $script"
    bash "$script"
  done
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins the whole tested set (kfp pins requests/urllib3/kubernetes/protobuf; TensorFlow
# must agree with them), so a fresh machine gets exactly what CI tested.
extras=all
[ "$with_test_tools" = 1 ] && extras=dev
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$extras]"
.venv/bin/python -m pip check
echo "branchops is set up: .venv/bin/branchops --help"
