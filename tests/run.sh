#!/bin/bash
# make check: unit tests, the layer check, the checker's self-test, then the integration suite
# (pytest) that really mounts; one closing summary line over everything.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
pass=0 fail=0 skip=0

tally() { # add up the "N passed, N failed[, N skipped]" line of a suite's log
	local line
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
	if [ -z "$line" ]; then
		echo "run.sh: $2 printed no summary line" >&2
		fail=$((fail + 1))
		return
	fi
	set -- $(echo "$line" | tr -dc '0-9 ')
	pass=$((pass + $1)) fail=$((fail + $2)) skip=$((skip + ${3:-0}))
}

log=$(mktemp)
snap=$(mktemp)
tests/sysdirs.sh snap "$snap" # compared at the end: the suite changes nothing outside its folders
echo "== unit tests"
"$BUILD/unit" | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || grep -q ' failed' "$log" || fail=$((fail + 1))
tally "$log" unit
echo "== layers (include lines against doc/DESIGN.md's layer line)"
python3 tests/check_layers.py | tee "$log"
tally "$log" layers
echo "== view checker self-test"
python3 tests/check_view.py --selftest 2>&1 | tee "$log" | tail -n 3
sed -n 's/^selftest: //p' "$log" >"$log.s"
tally "$log.s" check_view-selftest
echo "== integration tests (real mounts, pytest)"
# Debian's python3-pytest lives with /usr/bin/python3, whatever python3 comes first on PATH
BUILD=$BUILD /usr/bin/python3 -m pytest tests/integration ${PYTEST_ARGS:-} | tee "$log"
tally "$log" integration
echo "== the machine's folders (/usr/local, /sbin, /etc) as they were"
tests/sysdirs.sh check "$snap" | tee "$log"
tally "$log" sysdirs
rm -f "$log" "$log.s" "$snap"
echo
if [ "$skip" -gt 0 ]; then
	echo "$pass passed, $fail failed, $skip skipped"
else
	echo "$pass passed, $fail failed"
fi
[ "$fail" -eq 0 ]
