#!/usr/bin/env bash
# Usage: scripts/check-fresh-debian.sh [DIR]        (as root; DIR default /srv/chroot-fresh, must not exist)
#
# Does `make test` pass on a fresh Debian with only the README's instructions? Builds a minimal Debian
# (debootstrap --variant=minbase) in DIR, gives it what any machine on this network needs and nothing else
# (the host's CA certificates, apt sources and proxy settings, pip configuration and PIP_* variables, DNS),
# then inside it, as root: installs the packages the README's first block names, clones this repository's
# current commit (commit first: uncommitted changes are not in the clone) and runs `make test`. The log is
# DIR/root/check.log; the last lines (pytest's summary) and the durations are printed at the end.
#
# Not part of `make test` (it downloads ~1.5 GB and runs the whole suite: tens of minutes). Environment:
#   SUITE=bookworm   MIRROR=<first Debian URI of the host's apt sources>   REV=HEAD
# At the end everything mounted under DIR is unmounted (the suite's podman storage too), the log is copied to
# DIR.log and DIR, about 4 GB, is removed: left behind, a few of them fill the disk that CI runs on. KEEP=1
# keeps DIR for inspection (to rerun then: nothing may be mounted under it, and rm -rf DIR).
set -euo pipefail
{ # one compound command: bash reads all of it before running, so editing this file mid-run changes nothing

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-/srv/chroot-fresh}
suite=${SUITE:-bookworm}
rev=${REV:-HEAD}

[ "$(id -u)" = 0 ] || { echo "check-fresh-debian: run as root (debootstrap, chroot, mount)" >&2; exit 1; }
[ ! -e "$dir" ] || { echo "check-fresh-debian: $dir exists: umount what is under it and remove it first" >&2; exit 1; }

# The mirror the host itself uses (deb822 .sources or one-line .list), else Debian's default.
sources=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
lists=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
mirror=${MIRROR:-$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\/*\)$/\1/p' <<<"$sources" | head -1)}
mirror=${mirror:-$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\/*\)[[:space:]].*/\2/p' \
                   <<<"$lists" | head -1)}
mirror=${mirror:-http://deb.debian.org/debian}

command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }

mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mnt() {  # mnt TARGET ARGS...: mount and remember it
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounts+=("$target")
}

t0=$(date +%s)
echo "== debootstrap --variant=minbase $suite $dir $mirror"
debootstrap --variant=minbase "$suite" "$dir" "$mirror" >/dev/null
t_boot=$(($(date +%s) - t0))

echo "== network setup copied from the host"
cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
[ -s "$dir/etc/hosts" ] || cp /etc/hosts "$dir/etc/hosts"
# apt: the host's sources (enabled ones only) and its Acquire settings (proxy, snapshot validity).
rm -f "$dir/etc/apt/sources.list"
[ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$dir/etc/apt/"
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && cp "$f" "$dir/etc/apt/sources.list.d/"
done
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -qiE '^[[:space:]]*Acquire' "$f" && cp "$f" "$dir${f}"
done
# CA certificates: the bundle, and the local ones the ca-certificates package adds to it when apt installs it.
mkdir -p "$dir/etc/ssl/certs" "$dir/usr/local/share/ca-certificates"
[ ! -d /usr/local/share/ca-certificates ] || cp -a /usr/local/share/ca-certificates/. "$dir/usr/local/share/ca-certificates/"
[ ! -f /etc/ssl/certs/ca-certificates.crt ] || cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
# pip: the global and root's configuration, the PIP_* variables, and the local paths they name (read-only).
pipfiles=()
for f in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" "${PIP_CONFIG_FILE:-}"; do
  [ -n "$f" ] && [ -e "$f" ] || continue
  mkdir -p "$dir$(dirname "${f/#$HOME//root}")"
  cp -a "$f" "$dir${f/#$HOME//root}"
  pipfiles+=("$f")
done
pipenv=()
while IFS='=' read -r name value; do
  pipenv+=("$name=$value")
done < <(env | grep '^PIP_' || true)
paths=$( { [ ${#pipfiles[@]} -eq 0 ] || grep -rhoE '(file://)?/[^[:space:]"]+' "${pipfiles[@]}"
          printf '%s\n' "${pipenv[@]}" | grep -oE '(file://)?/[^[:space:]"]+'; } 2>/dev/null || true)
for path in $(sed 's#^file://##' <<<"$paths" | sort -u); do
  case $path in */simple | */simple/) path=${path%/}; path=${path%/simple} ;; esac  # a local index: ../files too
  [ -d "$path" ] && [ ! -e "$dir$path" ] || continue
  mnt "$dir$path" --bind "$path" && mount -o remount,bind,ro "$dir$path"
done

mnt "$dir/proc" -t proc proc
mnt "$dir/sys" -t sysfs sys
mnt "$dir/dev" --bind /dev
mnt "$dir/dev/pts" --bind /dev/pts
mnt "$dir/dev/shm" -t tmpfs -o mode=1777 shm
mnt "$dir/tmp" -t tmpfs -o mode=1777 tmpfs

# The repository at REV, as a bare repository the chroot clones from (a fresh clone, like a new user's).
mkdir -p "$dir/srv"
git -C "$here" clone --quiet --bare --no-local "$here" "$dir/srv/modelfleet.git"
commit=$(git -C "$here" rev-parse "$rev")
# What the README says to install first: the packages of its `apt-get install` line.
pkgs=$(git -C "$here" show "$commit:README.md" | sed -n 's/^sudo apt-get install \([^#]*\)#.*/\1/p' | head -1)
pkgs=$(echo $pkgs)  # the words alone
[ -n "$pkgs" ] || { echo "check-fresh-debian: no 'sudo apt-get install …' line in README.md" >&2; exit 1; }

cat > "$dir/root/check.sh" <<EOF
set -euo pipefail
cd /root
echo "== as the README says: apt-get install $pkgs"
t0=\$(date +%s)
apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs
echo "== git clone, commit $commit"
git clone --quiet /srv/modelfleet.git modelfleet && cd modelfleet && git checkout --quiet --detach $commit
t1=\$(date +%s)
echo "== make test"
rc=0; make test || rc=\$?
t2=\$(date +%s)
echo "== durations: README prerequisites \$((t1 - t0))s, make test \$((t2 - t1))s (rc \$rc)"
exit \$rc
EOF

echo "== chroot: README prerequisites ($pkgs), clone, make test; log: $dir/root/check.log"
rc=0
chroot "$dir" /usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${pipenv[@]}" \
  /bin/bash /root/check.sh > "$dir/root/check.log" 2>&1 || rc=$?
tail -n 25 "$dir/root/check.log"
echo "== debootstrap ${t_boot}s; total $(($(date +%s) - t0))s; make test exit code $rc"
cleanup; mounts=()
under() { awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r; }  # (DIR is no mount)
for target in $(under); do umount -l "$target" || true; done
cp "$dir/root/check.log" "$dir.log"
if [ "${KEEP:-0}" = 1 ]; then
  echo "== kept $dir (KEEP=1); log also in $dir.log"
elif [ -z "$(under)" ]; then
  rm -rf --one-file-system "$dir" && echo "== removed $dir; log in $dir.log"
else
  echo "== $dir still has mounts under it: not removed" >&2
fi
exit $rc
}
