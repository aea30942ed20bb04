#!/bin/bash
# tree_clean.sh snap FILE | check FILE: nothing built is tracked by git (no tracked file
# matches .gitignore, none lies in a build folder), and `git status` is now what it was at the
# snap (a build, a sanitizer build or a test run leaves no untracked or modified file). Closes
# with "1 passed, 0 failed" or "0 passed, 1 failed". Outside a git checkout there is nothing
# to check.
set -u
cd "$(dirname "$0")/.."
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	[ "${1:-}" = check ] && echo "not a git checkout: nothing to check" && echo "1 passed, 0 failed"
	exit 0
fi
state() { git status --porcelain=v1 --untracked-files=all; }
case ${1:-} in
snap) state >"$2" ;;
check)
	tracked=$(git ls-files -ci --exclude-standard; git ls-files | grep -E '^build[^/]*/|\.o$')
	diff=$(state | diff "$2" - | grep '^[<>]')
	if [ -z "$tracked$diff" ]; then
		echo "no build output tracked; git status as before"
		echo "1 passed, 0 failed"
	else
		[ -z "$tracked" ] || { echo "tracked build outputs (git rm --cached them):"; echo "$tracked" | head -n 20; }
		[ -z "$diff" ] || { echo "git status changed (< before, > after):"; echo "$diff" | head -n 20; }
		echo "0 passed, 1 failed"
	fi ;;
*) echo "usage: tree_clean.sh snap|check FILE" >&2; exit 2 ;;
esac
