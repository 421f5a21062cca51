#!/usr/bin/env bash
# Builds the reference stack's two images, `ha` and `webapp`, from their own unchanged files
# (docker/reference/) on Shoal instead of a distribution with s6-overlay, Serf, Node and
# handlebars-cmd: FROM scratch, the static `shoal` binary standing in for `/init`, `serf`,
# `handlebars`, `with-contenv` and `s6-svc`, Debian's static busybox for the shell tools, and —
# because the reference's scripts and proxy are bash and HAProxy — Debian's bash and haproxy
# with the shared libraries they load. Used by crates/shoal/tests/reference_replay.rs.
#
#   docker/build-reference-images.sh          # tags shoal-reference-ha:test, shoal-reference-webapp:test
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-shoal-reference}

need=()
for pkg in busybox-static haproxy bash; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "==> installing ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "==> building the static shoal binary" >&2
BIN=$(scripts/build-static.sh)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
base="$ctx/base"
mkdir -p "$base"/{bin,usr/bin,usr/sbin,opt/bin,tmp,nodes,var/log,run,usr/local/etc/haproxy,config,serf-handlers,etc}
chmod 1777 "$base/tmp"
ln -s ../run "$base/var/run"

# Programs with their shared libraries and loader, at the paths they were linked against.
copy_with_libs() {
    local prog=$1 dest=$2
    cp "$prog" "$base$dest"
    for lib in $(ldd "$prog" | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$base$(dirname "$lib")"
        cp -L "$lib" "$base$lib"
    done
}
copy_with_libs /usr/sbin/haproxy /usr/sbin/haproxy
copy_with_libs /bin/bash /bin/bash
cp /bin/busybox "$base/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$base/bin/$applet" ] || ln -s busybox "$base/bin/$applet"
done
ln -s /bin/busybox "$base/usr/bin/env"

# Shoal, and the reference stack's tools it stands in for.
cp "$BIN" "$base/usr/bin/shoal"
ln -s usr/bin/shoal "$base/init"
for tool in serf handlebars with-contenv s6-svc s6-svscanctl s6-svstat; do
    ln -s shoal "$base/usr/bin/$tool"
done
ln -s /usr/bin/shoal "$base/opt/bin/serf"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$base/etc/group"

cat > "$ctx/Dockerfile.base" <<'DOCKERFILE'
FROM scratch
COPY base/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/init"]
DOCKERFILE
echo "==> docker build -t $PREFIX-base:test" >&2
docker build -q -f "$ctx/Dockerfile.base" -t "$PREFIX-base:test" "$ctx" >/dev/null

# The two images, as the reference's Dockerfiles lay out their files (only the FROM differs).
cp -r docker/reference "$ctx/reference"
cat > "$ctx/Dockerfile.ha" <<DOCKERFILE
FROM $PREFIX-base:test
COPY reference/ha/services/ha /etc/services.d/ha
COPY reference/ha/services/serf /etc/services.d/serf
COPY reference/ha/scripts/ /serf-handlers/
COPY reference/ha/config/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
COPY reference/ha/config/haproxy.cfg.hb /config/haproxy.cfg.hb
ENV ROLE balancer
EXPOSE 80 1936 9999 7946 7373
DOCKERFILE
cat > "$ctx/Dockerfile.webapp" <<DOCKERFILE
FROM $PREFIX-base:test
COPY reference/webapp/services/serf /etc/services.d/serf
COPY reference/webapp/services/node /etc/services.d/node
ENV ROLE backend
EXPOSE 3000 7946 7373
DOCKERFILE
for image in ha webapp; do
    echo "==> docker build -t $PREFIX-$image:test" >&2
    docker build -q -f "$ctx/Dockerfile.$image" -t "$PREFIX-$image:test" "$ctx" >/dev/null
done
