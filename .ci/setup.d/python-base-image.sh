#!/usr/bin/env bash
# The Python base image of the container tests (tests/containers): nothing can be pulled from a public
# registry here, so instead of python:3.11-slim (the Dockerfiles' default BASE_IMAGE) the tests import a
# Debian bookworm root file system (whose python3 is 3.11) with python3 and pip, made by mmdebstrap into
# a tarball:
#
#   .ci/setup.d/python-base-image.sh [OUT.tar]    # default: $BRANCHOPS_CI_CACHE/python-base/bookworm-python3.tar
#   podman import --change 'CMD ["python3"]' OUT.tar localhost/python-base:3.11   # what the tests do
#
# The tarball is built once (CI runs the setup scripts twice; the tests reuse it) and again only when its
# recipe changes: this script, the mirror or the machine's CA bundle. The image trusts the certificate
# authorities this machine trusts (the bundle replaces Debian's), so `pip install` in an image build works
# behind a TLS-inspecting proxy as it does on the machine.
# Idempotent, non-interactive; runs as root on Debian 12 after `apt-get update`.
set -euo pipefail

cache=${BRANCHOPS_CI_CACHE:-/opt/branchops-ci}
out=${1:-$cache/python-base/bookworm-python3.tar}
mirror=${BRANCHOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca_bundle" ] || ca_bundle=

# the tests build the tarball themselves when it is missing and mmdebstrap is here
if ! command -v mmdebstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap
fi

recipe=$( { cat "${BASH_SOURCE[0]}"; echo "$mirror"; [ -z "$ca_bundle" ] || cat "$ca_bundle"; } \
    | sha256sum | cut -d' ' -f1)
if [ -s "$out" ] && [ "$(cat "$out.recipe" 2>/dev/null)" = "$recipe" ]; then
    echo "python-base-image.sh: $out is already built from this recipe"
    exit 0
fi
mkdir -p "$(dirname "$out")"
partial="$out.partial"
rm -f "$partial" "$out.recipe"
hooks=()
if [ -n "$ca_bundle" ]; then
    hooks+=(--customize-hook="cp '$ca_bundle' \"\$1/etc/ssl/certs/ca-certificates.crt\"")
fi
started=$(date +%s)
# minbase with python3 and pip; no recommends (build-essential, python3-dev: the components install
# wheels only) and no documentation but the licences: about 200 MB.
mmdebstrap --format=tar --variant=minbase --include=python3,python3-pip,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" \
    bookworm "$partial" "$mirror"
mv "$partial" "$out"
echo "$recipe" > "$out.recipe"
echo "python-base-image.sh: built $out with mmdebstrap in $(( $(date +%s) - started ))s"
