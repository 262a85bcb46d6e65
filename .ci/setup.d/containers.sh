#!/usr/bin/env bash
# Image builder / registry port: the real tools the build-components tests use (docs/architecture.md §7).
# Idempotent, non-interactive; runs as root on Debian 12 after `apt-get update`.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends \
    buildah podman skopeo docker-registry busybox-static runc crun uidmap fuse-overlayfs containernetworking-plugins

# The docker builder's CLI. The tests drive it against podman's Docker-compatible API (`podman system
# service`), so no Docker daemon is wanted. Debian 12 ships the CLI only inside docker.io, together with
# dockerd and containerd (later releases split out docker-cli). A machine that already has the docker CLI
# keeps it: docker.io conflicts with Docker's own docker-ce-cli. podman-docker's `docker` is podman
# itself, not the docker CLI, so it does not count.
docker_version=$(docker --version 2>/dev/null || true)
if [ "${docker_version#Docker version}" = "$docker_version" ]; then
    docker_cli_candidate=$(LC_ALL=C apt-cache policy docker-cli 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [ -n "$docker_cli_candidate" ] && [ "$docker_cli_candidate" != "(none)" ]; then
        apt-get install -y --no-install-recommends docker-cli
    else
        apt-get install -y --no-install-recommends docker.io
        # Only the CLI was wanted: the daemons it brought along stay off.
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now docker.service docker.socket containerd.service >/dev/null 2>&1 || true
        fi
    fi
fi

# The Debian package ships a registry service listening on :5000; the tests start their own registry on
# a free port, and a machine-wide one would only hold a port someone else may need.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi

# podman in a container/CI sandbox: runc as the runtime and ulimits the sandbox can grant.
install -d -m 0755 /etc/containers /etc/containers/registries.conf.d
conf=/etc/containers/containers.conf
touch "$conf"
python3 - "$conf" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()

def ensure(text: str, section: str, key: str, line: str) -> str:
    """Set key in [section] (adding the section if needed), leaving everything else as it is."""
    pattern = re.compile(rf"^\[{re.escape(section)}\][ \t]*$", re.M)
    match = pattern.search(text)
    if not match:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"[{section}]\n{line}\n"
    start = match.end()
    nxt = re.compile(r"^\[", re.M).search(text, start)
    end = nxt.start() if nxt else len(text)
    body = text[start:end]
    key_line = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=.*$", re.M)
    body = key_line.sub(line, body, count=1) if key_line.search(body) else "\n" + line + body
    return text[:start] + body + text[end:]

text = ensure(text, "containers", "default_ulimits", 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]')
text = ensure(text, "engine", "runtime", 'runtime = "runc"')
open(path, "w", encoding="utf-8").write(text)
PY

# A registry on this machine's loopback speaks plain HTTP. (The tests pass their own registries.conf
# with the exact host:port they start; this entry covers a local registry on the conventional port.)
cat > /etc/containers/registries.conf.d/50-branchops-local.conf <<'CONF'
[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
location = "localhost:5000"
insecure = true
CONF

buildah --version
podman --version
skopeo --version
docker --version
