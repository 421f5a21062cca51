#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages (real peers such as
# HashiCorp Serf) and cargo tools. Safe to run on every CI run: it only installs what is missing.
set -euo pipefail

# hatop: the curses client of HAProxy's stats socket, which reads the balancer's runtime API.
# s6: its s6-svstat and s6-svc read and drive `shoal init`'s supervise folders. python3-yaml: crates/shoal/tests/swarm.rs parses the Kubernetes manifests with it; openssl: the
# TLS log test makes a certificate and connects with s_client.
APT_PACKAGES=(serf haproxy hatop nginx-light socat chromium prometheus-haproxy-exporter python3-yaml openssl s6)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "==> installing Debian packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "==> Debian packages present: ${APT_PACKAGES[*]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
