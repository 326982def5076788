#!/usr/bin/env bash
# Usage: scripts/install-deps.sh [test|demo]   (default: test)
#
# The system tools `make test` (or `make demo`) needs, installed with apt-get when any is missing (as root, else
# through sudo). `make test` and `make demo` run this first, and so does .ci/run; when everything is present it
# only looks (no apt-get, no network). SKIP_SYSTEM_DEPS=1 skips it (what needs a missing tool then fails and
# names it).
#
# What needs what (demo: the first four lines; test: all of them):
#   make, git                  the Makefile; git daemon and git http-backend serve the tests' fleet repositories
#   python3, python3-venv      the Makefile's .venv
#   ca-certificates            pip and git over HTTPS
#   openssh-client             ssh-keygen makes the commit-signing keys; ssh pulls over SSH
#   gnupg                      gpg: OpenPGP-signed commits
#   openssh-server             sshd: Git over SSH in tests/agent/test_hosting.py and bench/bench_idle_poll.py
#   nginx-light, fcgiwrap      git http-backend behind nginx (smart HTTP, TLS, basic auth), and nginx's WebDAV
#                              module that tests/capture uploads batches to
#   openssl                    the TLS tests' certificate authority (server and client certificates)
#   tinyproxy                  a real HTTP(S) forward proxy (CONNECT) in tests/agent/test_proxy_mtls.py
#   systemd                    systemd-analyze verify checks the unit files in systemd/
#   chromium                   opens the drift report's HTML in a real browser (tests/drift/test_report.py)
#   prometheus                 a real Prometheus scrapes an agent, promtool checks the rules (tests/monitoring)
#   curl                       docs/quickstart.md's commands, run as written
#   procps                     ps, for the tests that check which processes are left running
#   gcc, libc6-dev, python3-dev  compile capture's C ring writer at install (hatch_build.py; without them the
#                              package is pure Python and tests/capture/test_ring_writer.py fails for the C one)
#   podman, runc, debootstrap  tests/packaging/test_image.py builds deploy/container/Dockerfile on a Debian base
#                              made with debootstrap (no container registry needed) and runs the agent in it
#                              (runc: crun, podman's default runtime, refuses hosts with hybrid cgroups)
set -euo pipefail

what=${1:-test}
case $what in
  test|demo) ;;
  *) echo "usage: $0 [test|demo]" >&2; exit 2 ;;
esac
if [ "${SKIP_SYSTEM_DEPS:-0}" = 1 ]; then
  exit 0
fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
# sbin is not on every user's PATH: look there too.
have_sbin() { have "$1" || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

have make || need+=(make)
have git || need+=(git)
have python3 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
have ssh-keygen || need+=(openssh-client)
if [ "$what" = test ]; then
  # Debian's git package has git daemon; a git built without it gets Debian's.
  have git && { [ -x "$(git --exec-path)/git-daemon" ] || need+=(git-daemon-sysvinit); }
  have gpg || need+=(gnupg)
  have_sbin sshd || need+=(openssh-server)
  have_sbin nginx || need+=(nginx-light)
  have_sbin fcgiwrap || need+=(fcgiwrap)
  have openssl || need+=(openssl)
  have tinyproxy || need+=(tinyproxy)
  have systemd-analyze || need+=(systemd)
  have chromium || have chromium-browser || need+=(chromium)
  { have prometheus && have promtool; } || need+=(prometheus)
  have curl || need+=(curl)
  have ps || need+=(procps)
  have podman || need+=(podman)
  have_sbin runc || need+=(runc)
  have_sbin debootstrap || need+=(debootstrap)
  have gcc || need+=(gcc libc6-dev)
  python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(sysconfig.get_paths()["include"] + "/Python.h"))' \
    2>/dev/null || need+=(python3-dev)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: missing: ${need[*]}" >&2
if ! have apt-get; then
  echo "install-deps: no apt-get here: install the packages above (Debian names) with your package manager," \
       "or run with SKIP_SYSTEM_DEPS=1" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif have sudo; then
  sudo=(sudo DEBIAN_FRONTEND=noninteractive)
else
  echo "install-deps: not root and no sudo: as root, run" >&2
  echo "  apt-get update && apt-get install -y ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "+ ${sudo[0]:+sudo }apt-get update && ${sudo[0]:+sudo }apt-get install ${need[*]}" >&2
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q "${need[@]}"
