#!/bin/bash
# Run each libFuzzer target for SECONDS from the seed corpus in tests/fuzz/corpus (copied, so
# the tree stays clean); print execs and crashes per target and one closing summary line.
set -u
dir=$1 secs=$2
shift 2
pass=0 fail=0
for t in "$@"; do
	work=$dir/corpus-$t
	mkdir -p "$work" "$dir/artifacts-$t"
	cp -n tests/fuzz/corpus/$t/* "$work/" 2>/dev/null
	log=$dir/fuzz-$t.log
	"$dir/fuzz_$t" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$dir/artifacts-$t/" "$work" >"$log" 2>&1
	rc=$?
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
	[ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
	crashes=$(ls "$dir/artifacts-$t" | wc -l)
	if [ $rc -eq 0 ] && [ "$crashes" -eq 0 ]; then
		echo "ok - fuzz_$t: ${execs:-?} execs in ${secs}s, 0 crashes"
		pass=$((pass + 1))
	else
		echo "FAIL - fuzz_$t: exit $rc, $crashes crash inputs in $dir/artifacts-$t"
		grep -E 'ERROR|SUMMARY|abort' "$log" | head -n 5 | sed 's/^/    /'
		fail=$((fail + 1))
	fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
