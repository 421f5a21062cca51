#!/usr/bin/env bash
# Builds the `shoal:dev` image offline: FROM scratch, the static `shoal` binary, Debian's static
# busybox for /bin/sh (service scripts and event handlers need a shell), and the services folders
# of both roles, run as `nobody` (uid 65534). `ROLE=balancer` or `ROLE=backend` (the default)
# picks what `shoal init` runs.
#
#   docker/build-image.sh            # tags shoal:dev
#   docker/build-image.sh shoal:test
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-shoal:dev}

if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed"; then
    echo "==> installing busybox-static" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi

echo "==> building the static shoal binary" >&2
BIN=$(scripts/build-static.sh)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root"/{bin,usr/bin,etc/shoal,tmp} "$ctx/empty"
chmod 1777 "$root/tmp"
cp "$BIN" "$root/usr/bin/shoal"
# The reference stack's tools that `shoal` stands in for under their own names.
for tool in serf handlebars with-contenv s6-svc s6-svscanctl s6-svstat; do
    ln -s shoal "$root/usr/bin/$tool"
done
ln -s usr/bin/shoal "$root/init"   # s6-overlay's entry point: `/init [CMD]` is `shoal init [-- CMD]`
# s6-overlay's places, as links into /run/shoal (the one writable folder, a tmpfs when the root
# is read-only), where `shoal init` makes them: /run/service/<name> (v3) and
# /var/run/s6/services/<name> (v1, v2; /var/run is /run) with their supervise/ folders, and the
# container environment for with-contenv.
mkdir -p "$root/var" "$root/run/s6"
ln -s ../run "$root/var/run"
ln -s /run/shoal/service "$root/run/service"
ln -s /run/shoal/service "$root/run/s6/services"
ln -s /run/shoal/container_environment "$root/run/s6/container_environment"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cp -r docker/roles "$root/etc/shoal/roles"
# Names for the processes' users (`ps`, logs); nothing here logs in.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
# The only places Shoal writes (snapshot, keyring, admin socket), owned by the user it runs as;
# everything else can be mounted read-only (`docker run --read-only --tmpfs /run/shoal:uid=65534,gid=65534`).
COPY --chown=65534:65534 empty/ /var/lib/shoal/
COPY --chown=65534:65534 empty/ /run/shoal/
# Not root: ports below 1024 are open to any user inside a container's own network namespace
# (Docker sets net.ipv4.ip_unprivileged_port_start=0), so the balancer binds 80 as `nobody`.
USER 65534:65534
ENV PATH=/usr/bin:/bin ROLE=backend \
    SHOAL_INIT_SCAN_DIRS=/run/shoal/service SHOAL_INIT_CONTENV_DIR=/run/shoal/container_environment
EXPOSE 80 1936 3000 7946/tcp 7946/udp
STOPSIGNAL SIGTERM
# PID 1 is `shoal init` (sh only picks the role's services folder, then execs it).
ENTRYPOINT ["/bin/sh", "-c", "exec /usr/bin/shoal init --services-dir \"/etc/shoal/roles/$ROLE/services.d\" -- \"$@\"", "init"]
DOCKERFILE

echo "==> docker build -t $TAG" >&2
docker build -q -t "$TAG" "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "==> $TAG: $((size / 1024 / 1024)) MiB ($size bytes)" >&2
