#!/bin/sh
# The Debian packages of `make check-cluster`: a real Slurm (munge, slurmctld, slurmd,
# slurm-client), about 13 MB with --no-install-recommends. Installed when missing (as root),
# with a policy-rc.d in place for the install only, so apt starts no service: the suite starts
# its own daemons on its own ports and stops them by PID. Without root: says what to install.
# .ci/run calls this in its install step, before it records /etc and /sbin (tests/sysdirs.sh).
PKGS="munge slurmctld slurmd slurm-client"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "qvlmoefs: missing Debian packages:$missing" >&2
	echo "qvlmoefs: run as root: apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi
echo "qvlmoefs: installing$missing"
rc=/usr/sbin/policy-rc.d
made=""
if [ ! -e "$rc" ]; then # an existing one (a container's) is kept as it is
	printf '#!/bin/sh\nexit 101\n' >"$rc" && chmod 0755 "$rc" && made=1
	trap 'rm -f "$rc"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
ok=1
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $missing >/dev/null || ok=""
[ -n "$made" ] && rm -f "$rc"
[ -n "$ok" ] || { echo "qvlmoefs: apt-get install$missing failed" >&2; exit 1; }
