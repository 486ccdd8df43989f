#!/bin/sh
# Checks that the Debian packages (and the one PyPI package, openai) that
# moed's build and tests need are installed.  As root it installs the
# missing ones; otherwise it prints the exact install lines and fails.
PKGS="gcc make clang libc6-dev pkg-config python3 python3-pytest python3-numpy python3-pip libuv1-dev \
libcjson-dev node-llhttp libopenblas-dev libhwloc-dev libpcre2-dev"
missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
# The openai client (for the API tests) is not packaged in Debian 12: it
# comes from PyPI into Debian's python3.
pip_missing=
/usr/bin/python3 -c 'import openai' 2>/dev/null || pip_missing=openai
[ -z "$missing$pip_missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if [ -n "$missing" ]; then
        echo "deps: installing$missing"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
            { echo "deps: apt-get install failed for:$missing" >&2; exit 1; }
    fi
    if [ -n "$pip_missing" ]; then
        echo "deps: pip installing $pip_missing for /usr/bin/python3"
        /usr/bin/python3 -m pip install -q --break-system-packages --root-user-action=ignore \
            $pip_missing || { echo "deps: pip install $pip_missing failed" >&2; exit 1; }
    fi
else
    echo "deps: missing packages; run as root:" >&2
    [ -n "$missing" ] && echo "  apt-get install -y$missing" >&2
    [ -n "$pip_missing" ] && echo "  /usr/bin/python3 -m pip install --break-system-packages $pip_missing" >&2
    exit 1
fi
