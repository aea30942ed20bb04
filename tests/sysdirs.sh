#!/bin/bash
# Tests must not change the machine outside their own folders. `sysdirs.sh snap FILE` records
# every entry of /usr/local, /sbin and /etc (path, type; for all but folders size and mtime);
# `sysdirs.sh check FILE` compares them now with FILE, prints the entries that appeared, went
# or changed, and closes with "1 passed, 0 failed" or "0 passed, 1 failed" for the runners'
# tallies. A folder's own mtime is left out: it moves whenever anything (another job on the
# machine too) makes and removes a file there, which leaves nothing behind; what is left
# behind or rewritten shows. Other programs that change these folders while a suite runs show
# up here too: the lines name the entries.
set -u
DIRS=(/usr/local/ /sbin/ /etc/) # the slashes follow /sbin -> usr/sbin

list() {
	{
		find "${DIRS[@]}" -xdev -type d -printf '%p d\n'
		find "${DIRS[@]}" -xdev ! -type d -printf '%p %y %s %T@\n'
	} 2>/dev/null | LC_ALL=C sort
}

case ${1:-} in
snap) list >"$2" ;;
check)
	changed=$(list | LC_ALL=C diff "$2" - | grep '^[<>]')
	if [ -z "$changed" ]; then
		echo "/usr/local, /sbin and /etc are as they were before the suite"
		echo "1 passed, 0 failed"
	else
		echo "sysdirs: the suite changed /usr/local, /sbin or /etc (< before, > after):"
		echo "$changed" | head -n 40
		echo "0 passed, 1 failed"
	fi ;;
*) echo "usage: sysdirs.sh snap|check FILE" >&2; exit 2 ;;
esac
