#!/bin/sh
# Make the permission tests' second user (qvlmoefs-test, with a group of its own) once, as a
# set-up step like the packages: made by a test, it would change /etc, which the suite checks
# that it never does. Without root there is nothing to do: the tests that need it skip.
user=qvlmoefs-test
[ "$(id -u)" -eq 0 ] || exit 0
id "$user" >/dev/null 2>&1 && exit 0
useradd -M -s /bin/sh "$user" || {
	echo "qvlmoefs: useradd $user failed" >&2
	exit 1
}
