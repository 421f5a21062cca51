#!/usr/bin/env bash
# Installs the peers and load generators the benchmarks use (Debian packages), idempotently:
# Serf; HAProxy, nginx and Caddy to measure against; wrk and h2load (nghttp2-client) to load
# them; openssl for the TLS certificate; curl. (taskset is util-linux's, always there.)
# Waits for a dpkg lock another apt run holds rather than failing.
set -euo pipefail
PACKAGES=(serf wrk haproxy nginx-light curl caddy nghttp2-client openssl)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    WAIT=(-o DPkg::Lock::Timeout=600)
    $SUDO apt-get "${WAIT[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${WAIT[@]}" install -y -qq --no-install-recommends "${missing[@]}"
fi
