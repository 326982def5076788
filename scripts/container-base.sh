#!/usr/bin/env bash
# Usage: scripts/container-base.sh OUT.tar      (as root; SUITE=bookworm MIRROR=<the host's Debian mirror>)
#
# A base image for deploy/container/Dockerfile made from Debian's own packages, where no container registry is
# reachable (or none is trusted): debootstrap --variant=minbase with python3-venv and ca-certificates, and what
# any machine on the host's network needs to install packages (like scripts/check-fresh-debian.sh): the host's
# Acquire settings (proxy, snapshot validity) for apt, the host's local CA certificates in the system bundle, and
# /etc/pip.conf telling pip to trust that bundle (pip otherwise trusts only its own copy of the public CAs). No
# apt caches.
# The result is a root filesystem tarball; import it and build on it:
#
#   scripts/container-base.sh base.tar
#   podman import base.tar localhost/debian-python:bookworm
#   podman build --format docker --pull=never --build-arg PYTHON_IMAGE=localhost/debian-python:bookworm \
#     --ignorefile deploy/container/Dockerfile.dockerignore -f deploy/container/Dockerfile -t modelfleet-agent .
#
# tests/packaging/test_image.py does this (and caches OUT.tar). Takes about 2 minutes on a 2-core machine.
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
suite=${SUITE:-bookworm}
[ "$(id -u)" = 0 ] || { echo "container-base: run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "container-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

# The mirror the host itself uses (deb822 .sources or one-line .list), else Debian's default.
sources=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
lists=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
mirror=${MIRROR:-$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\/*\)$/\1/p' <<<"$sources" | head -1)}
mirror=${mirror:-$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\/*\)[[:space:]].*/\2/p' \
                   <<<"$lists" | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d "${TMPDIR:-/tmp}/container-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3-venv,ca-certificates "$suite" "$root" "$mirror" >/dev/null
# apt in the image: the host's Acquire settings (a proxy, a snapshot mirror's validity), the suite's sources.
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -qiE '^[[:space:]]*Acquire' "$f" && cp "$f" "$root$f"
done
# CA certificates: the local ones the host adds (a TLS-inspecting proxy's, a company CA) and the bundle with them.
if [ -d /usr/local/share/ca-certificates ]; then
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ ! -s /etc/ssl/certs/ca-certificates.crt ] || cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/root/.cache
: > "$root/etc/resolv.conf"   # the container runtime provides it
tar --numeric-owner -C "$root" -cf "$out.tmp" .
mv "$out.tmp" "$out"
