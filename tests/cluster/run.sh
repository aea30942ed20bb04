#!/bin/bash
# make check-cluster: qvlmoefs under a real Slurm (Debian's munge, slurmctld, slurmd), one node
# and two (tests/cluster/conftest.py), doc/cluster.md's scripts as written. The tasks load
# their rank folders with the official safetensors, from the venv of tests/real/setup.sh.
# pytest's summary, then one line "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/../.."
PY=$(tests/real/setup.sh) || { echo "check-cluster: could not build the environment of tests/real"; echo "0 passed, 1 failed"; exit 1; }
# one suite at a time on a machine: the namespaces' names and addresses are its own
exec 9>/tmp/qvlmoefs-cluster.lock
flock 9
QVC_PY=$PY BUILD=${BUILD:-build} /usr/bin/python3 -m pytest tests/cluster ${PYTEST_ARGS:-} "$@"
