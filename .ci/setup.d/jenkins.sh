#!/bin/bash
# Offline checks of the Jenkins integration (tests/jenkins): Debian's groovy parses the Jenkinsfile.
# default-jre-headless provides /usr/lib/jvm/default-java, where Debian's groovy launcher looks for Java.
# Idempotent, non-interactive; runs as root on Debian 12 after `apt-get update`.
set -euo pipefail

if command -v groovy >/dev/null 2>&1 && [ -x /usr/lib/jvm/default-java/bin/java ]; then
    exit 0
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends default-jre-headless groovy
groovy --version
