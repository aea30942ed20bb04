#!/bin/sh
# Install the Debian packages named on the command line that are missing (as root), or say
# what to install. Used by `make check` and `make demo` so a fresh machine needs nothing else.
missing=""
for p in "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "qvlmoefs: missing Debian packages:$missing" >&2
	echo "qvlmoefs: run as root: apt-get install -y$missing" >&2
	exit 1
fi
echo "qvlmoefs: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null || {
	echo "qvlmoefs: apt-get install$missing failed" >&2
	exit 1
}
