#!/bin/sh
# Checks that the Debian packages moed's build and tests need are installed.
# As root it installs the missing ones; otherwise it prints the exact
# apt-get line and fails.
PKGS="gcc make clang libc6-dev pkg-config python3 python3-pytest python3-numpy libuv1-dev \
libcjson-dev node-llhttp libopenblas-dev libhwloc-dev libpcre2-dev"
missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
        { echo "deps: apt-get install failed for:$missing" >&2; exit 1; }
else
    echo "deps: missing Debian packages; run as root:" >&2
    echo "  apt-get install -y$missing" >&2
    exit 1
fi
