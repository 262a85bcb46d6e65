#!/usr/bin/env bash
# GitHub forge contract tests (docs/architecture.md §7): Prism serving GitHub's official REST description.
# Installs @stoplight/prism-cli and @octokit/openapi, pinned, into a fixed folder that
# tests/forge_github/prism.py looks in (BRANCHOPS_PRISM_HOME overrides it).
# Idempotent, non-interactive; runs as root on Debian 12 after `apt-get update`.
set -euo pipefail

PRISM_HOME="${BRANCHOPS_PRISM_HOME:-/opt/branchops-ci/prism}"
# prism-cli 5.14.2 is the newest release that supports Debian 12's nodejs (18.20); later ones need node 24.
PRISM_VERSION="5.14.2"
OCTOKIT_OPENAPI_VERSION="23.0.2"

export DEBIAN_FRONTEND=noninteractive
if ! command -v node >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends nodejs
fi
if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends npm
fi

installed_version() {  # the version of an installed package, or nothing
    node -e 'try { process.stdout.write(require(process.argv[1]).version) } catch (e) {}' \
        "$PRISM_HOME/node_modules/$1/package.json" 2>/dev/null || true
}

if [ "$(installed_version @stoplight/prism-cli)" = "$PRISM_VERSION" ] \
   && [ "$(installed_version @octokit/openapi)" = "$OCTOKIT_OPENAPI_VERSION" ] \
   && [ -x "$PRISM_HOME/node_modules/.bin/prism" ]; then
    echo "prism.sh: Prism $PRISM_VERSION and @octokit/openapi $OCTOKIT_OPENAPI_VERSION already in $PRISM_HOME"
    exit 0
fi

install -d -m 0755 "$PRISM_HOME"
cat > "$PRISM_HOME/package.json" <<JSON
{
  "name": "branchops-ci-prism",
  "private": true,
  "version": "0.0.0",
  "description": "Prism and GitHub's OpenAPI description for branchops' GitHub forge tests",
  "dependencies": {
    "@stoplight/prism-cli": "$PRISM_VERSION",
    "@octokit/openapi": "$OCTOKIT_OPENAPI_VERSION"
  }
}
JSON
rm -f "$PRISM_HOME/package-lock.json"
# --ignore-scripts: nothing here needs an install script (one dependency only sends telemetry).
(cd "$PRISM_HOME" && npm install --no-audit --no-fund --ignore-scripts --omit=dev --loglevel=error)

"$PRISM_HOME/node_modules/.bin/prism" --version >/dev/null
test -s "$PRISM_HOME/node_modules/@octokit/openapi/generated/api.github.com.json"
echo "prism.sh: installed Prism $PRISM_VERSION and @octokit/openapi $OCTOKIT_OPENAPI_VERSION in $PRISM_HOME"
