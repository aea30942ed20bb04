"""The cluster suite's harness: a real Slurm (Debian's munge, slurmctld, slurmd, slurm-client),
started by the suite in a folder of its own, and stopped by PID.

No systemd and no cgroups: proctrack/linuxproc, task/none, no accounting. Config, munge key
and socket, state, spool and logs live in the suite's folder (/tmp/qvlmoefs-cluster.*), on
ports of its own. Two clusters:

- `one`: one node (NodeName=localhost, NodeAddr=127.0.0.1) in this host's namespaces, slurmctld
  beside it; free ports found at start.
- `two`: two slurmd, each in a network, UTS and mount namespace of its own (hostnames node1 and
  node2, a private tmpfs at the suite's `local/` folder as each node's own /tmp), joined by
  veth pairs to a bridge in a third network namespace where slurmctld runs and the client
  commands are sent from. Each node's FUSE mounts are its own; the source folder is shared.

Both clusters run mount-scripts/slurm's Prolog and Epilog (through wrappers that point them at
the suite's build and folder), which leave jobs without a `qvlmoefs:` comment alone.

The session ends with a plain `N passed, N failed[, N skipped]` line, as the other suites do.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = os.environ.get("BUILD", "build")
QV = ROOT / BUILD / "qvlmoefs"
MK = ROOT / BUILD / "qvlmoefs-mkckpt"
DOC = ROOT / "doc" / "cluster.md"
TEST_USER = "qvlmoefs-test"
SLURM_BINS = ("munged", "slurmctld", "slurmd", "sbatch")
EXPERTS, EP = 16, 8

# ---------------------------------------------------------------------------------- doc blocks


def doc_block(name):
    """The fenced block below `<!-- cluster-test: NAME -->` in doc/cluster.md, as written."""
    lines = DOC.read_text().splitlines()
    marker = f"<!-- cluster-test: {name} -->"
    i = lines.index(marker) + 1
    assert lines[i].startswith("```"), f"{DOC}: no fenced block after {marker}"
    j = lines.index("```", i + 1)
    return "\n".join(lines[i + 1:j]) + "\n"


# ------------------------------------------------------------------------------------ commands


def sh(*args, check=True, timeout=60, **kw):
    """Run a command, output captured as text; on failure raise with both outputs."""
    __tracebackhide__ = True
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(map(str, args))}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def free_ports(n):
    """n TCP ports free on this host now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(pred, timeout, interval=0.1):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


class Daemon:
    """A daemon in the foreground of a child process, stopped by its PID."""

    def __init__(self, name, argv, log, **kw):
        self.name, self.log = name, log
        self.p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                  stdout=open(log, "ab"), stderr=subprocess.STDOUT, **kw)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


# ------------------------------------------------------------------------------------- the suite


class Suite:
    """The suite's folder (mode 0755: munge and the test user go through it), its source
    checkpoints, the PATH of the jobs and the munge daemon both clusters use."""

    def __init__(self):
        self.t = Path(tempfile.mkdtemp(prefix="qvlmoefs-cluster."))
        self.t.chmod(0o755)
        self.py = os.environ.get("QVC_PY") or shutil.which("python3")
        for d in ("bin", "ubin", "sbin", "work", "out", "log", "munge"):
            (self.t / d).mkdir()
        (self.t / "out").chmod(0o1777)
        (self.t / "work").chmod(0o1777)
        # what the jobs find on their PATH: the project's commands and a `python`
        for name, target in (("qvlmoefs", QV), ("qvlmoefs-mkckpt", MK),
                             ("qvlmoefs-node-mount", ROOT / "mount-scripts/qvlmoefs-node-mount"),
                             ("qvlmoefs-slurm", ROOT / "mount-scripts/slurm/qvlmoefs-slurm")):
            (self.t / "bin" / name).symlink_to(target)
        # the venv's python by a wrapper (a link would lose the venv); Debian's for other users
        for d, py in (("bin", self.py), ("ubin", "/usr/bin/python3")):
            w = self.t / d / "python"
            w.write_text(f'#!/bin/sh\nexec "{py}" "$@"\n')
            w.chmod(0o755)
        shutil.copy(HERE / "train.py", self.t / "work" / "train.py")
        for x in ("prolog", "epilog"):  # slurm.conf's Prolog/Epilog: the project's, told where
            w = self.t / "sbin" / f"qvlmoefs-{x}"
            w.write_text(f'#!/bin/sh\nexport QVLMOEFS_SLURM_ROOT="{self.t}/run" QVLMOEFS="{QV}"\n'
                         f'export PATH="{self.t}/bin:$PATH"\n'
                         f'exec "{ROOT}/mount-scripts/slurm/qvlmoefs-{x}"\n')
            w.chmod(0o755)
        self.src = self.t / "src"
        sh(MK, "--experts", EXPERTS, self.src)
        self.broken = self.t / "src-broken"  # the last shard missing
        shutil.copytree(self.src, self.broken)
        (self.broken / "model-00002-of-00002.safetensors").unlink()
        self.munged = None

    def start_munge(self):
        m = self.t / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(m, "munge", "munge")
        m.chmod(0o755)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        self.munge_socket = m / "munge.socket"
        self.munged = Daemon("munged", ["munged", "-F", f"--socket={self.munge_socket}",
                                        f"--key-file={key}", f"--pid-file={m}/munged.pid",
                                        f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
                             self.t / "log" / "munged.out", user="munge", group="munge",
                             extra_groups=[])
        assert wait_for(self.munge_socket.exists, 10), (self.t / "log/munged.out").read_text()

    def stop(self):
        if self.munged:
            self.munged.stop()


class Cluster:
    """One Slurm: its slurm.conf, slurmctld and slurmd(s), and the commands that use it.

    nodes: {name: address}; netns: run each slurmd in namespaces of its own (see the module)."""

    def __init__(self, suite, name, nodes, netns):
        self.s, self.name, self.nodes, self.netns = suite, name, nodes, netns
        self.d = suite.t / name
        for sub in ("state", "spool", "log"):
            (self.d / sub).mkdir(parents=True)
        self.conf = self.d / "slurm.conf"
        self.daemons, self.slurmd = [], {}
        self.tag = f"qvc{os.getpid() % 100000}{name[0]}"
        self.nets = []
        if netns:
            self.hub = self.tag + "h"
            ctl, ports = "localhost(10.231.0.1)", (6817, 6818)
        else:
            ctl, ports = "localhost", free_ports(2)
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr={a} CPUs={16 if not netns else 8} State=UNKNOWN"
            for n, a in nodes.items())
        prolog = doc_block("slurm.conf").replace("/usr/local/sbin/", f"{suite.t}/sbin/")
        self.conf.write_text(f"""ClusterName=qvc{name}
SlurmctldHost={ctl}
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={suite.munge_socket}
StateSaveLocation={self.d}/state
SlurmdSpoolDir={self.d}/spool/%n
SlurmctldPidFile={self.d}/slurmctld.pid
SlurmdPidFile={self.d}/slurmd-%n.pid
SlurmctldLogFile={self.d}/log/slurmctld.log
SlurmdLogFile={self.d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
KillWait=10
InactiveLimit=0
MinJobAge=600
SchedulerType=sched/backfill
{prolog}{node_lines}
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=f"{suite.t}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}")
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            if k != "SLURM_CONF":
                del self.env[k]

    # the namespaces of two nodes: a bridge in the hub, a veth pair to each node
    def _net_up(self):
        ns = [self.hub] + [self.tag + n for n in self.nodes]
        for n in ns:
            sh("ip", "netns", "add", n)
            self.nets.append(n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "addr", "add", "10.231.0.1/24", "dev", "br0")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, (n, a) in enumerate(self.nodes.items()):
            sh("ip", "-n", self.hub, "link", "add", f"v{i}", "type", "veth",
               "peer", "name", "eth0", "netns", self.tag + n)
            sh("ip", "-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            sh("ip", "-n", self.tag + n, "addr", "add", f"{a}/24", "dev", "eth0")
            sh("ip", "-n", self.tag + n, "link", "set", "eth0", "up")

    def client(self, argv):
        """argv of a client command run where slurmctld is reachable."""
        return (["ip", "netns", "exec", self.hub] if self.netns else []) + [str(a) for a in argv]

    def start(self):
        t0 = time.monotonic()
        if self.netns:
            self._net_up()
        self.ctld = Daemon("slurmctld", self.client(["slurmctld", "-D", "-i", "-f", self.conf]),
                           self.d / "log" / "slurmctld.out", env=self.env)
        self.daemons.append(self.ctld)
        for n in self.nodes:
            out = self.d / "log" / f"slurmd-{n}.out"
            if self.netns:
                local = self.s.t / "local"
                local.mkdir(exist_ok=True)
                # nsenter, not ip netns exec, which mounts a /sys without the cgroup folder
                # that slurmd looks for
                argv = ["nsenter", f"--net=/run/netns/{self.tag + n}", "unshare", "--uts", "--mount",
                        "--propagation", "private", "sh", "-c",
                        f'hostname {n} && mount -t tmpfs -o mode=1777,size=64m qvc-{n} "{local}" && '
                        f'exec slurmd -D -N {n} -f "{self.conf}"']
            else:
                argv = ["slurmd", "-D", "-f", self.conf]
            self.slurmd[n] = Daemon(f"slurmd {n}", argv, out, env=self.env)
            self.daemons.append(self.slurmd[n])
        ok = wait_for(lambda: self.idle_nodes() == len(self.nodes), 60)
        assert ok, f"nodes not idle: {self.query('sinfo', '-N', '-h')}\n{self.logs()}"
        self.start_s = time.monotonic() - t0

    def stop(self):
        """Cancel what still runs (slurmstepd outlives slurmd), stop the daemons, kill what
        the jobs left, remove the namespaces."""
        if self.daemons and self.ctld.alive():
            jobs = self.query("squeue", "-h", "-o", "%i").split()
            if jobs:
                self.query("scancel", *jobs)
                wait_for(lambda: not self.query("squeue", "-h", "-o", "%i").split(), 60)
        for dmn in reversed(self.daemons):
            dmn.stop()
        for line in leftovers(self.s):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass
        for n in reversed(self.nets):
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)

    def logs(self, tail=40):
        out = []
        for f in sorted((self.d / "log").iterdir()):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def query(self, *argv, check=False):
        p = sh(*self.client(argv), check=check, env=self.env)
        return p.stdout + p.stderr

    def idle_nodes(self):
        p = sh(*self.client(["sinfo", "-h", "-N", "-o", "%T"]), check=False, env=self.env)
        return sum(1 for s in p.stdout.split() if s == "idle") if p.returncode == 0 else 0

    # ---- jobs

    def sbatch(self, script, *opts, user=None, env=None, name="job"):
        """Submit SCRIPT's text (written into the work folder) with sbatch OPTS; the job ID."""
        path = self.s.t / "work" / f"{name}.sh"
        path.write_text(script)
        path.chmod(0o755)
        argv = ["sbatch", "--parsable", "-o", f"{self.s.t}/out/%j.out", "-D", self.s.t / "work",
                *opts, path]
        if user:
            argv = ["runuser", "-u", user, "--"] + argv
        p = sh(*self.client(argv), env=dict(self.env, **(env or {})), cwd="/")
        return p.stdout.strip().split(";")[0]

    def job(self, jid):
        """scontrol's fields of a job, as a dict."""
        out = sh(*self.client(["scontrol", "show", "job", "-o", jid]), env=self.env).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def wait_job(self, jid, timeout=240):
        """Wait until the job has ended, its steps and Epilog too; its fields."""
        done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED")
        j = wait_for(lambda: (lambda f: f if f.get("JobState") in done and
                              not self.completing(jid) else None)(self.job(jid)), timeout, 0.2)
        assert j, f"job {jid} not done in {timeout}s: {self.job(jid)}\n{self.output(jid)}\n{self.logs()}"
        return j

    def completing(self, jid):
        out = sh(*self.client(["squeue", "-h", "-t", "all", "-j", jid, "-o", "%T"]),
                 env=self.env, check=False).stdout
        return "COMPLETING" in out

    def wait_state(self, jid, state, timeout=120):
        assert wait_for(lambda: self.job(jid).get("JobState") == state, timeout, 0.2), \
            f"job {jid} never {state}: {self.job(jid)}\n{self.output(jid)}"

    def output(self, jid):
        p = self.s.t / "out" / f"{jid}.out"
        return p.read_text(errors="replace") if p.exists() else ""

    # ---- what a node holds

    def node_mounts(self, node):
        """This suite's mounts seen on node (in its mount namespace)."""
        pid = self.slurmd[node].pid if self.netns else "self"
        with open(f"/proc/{pid}/mounts") as f:
            return [line for line in f if str(self.s.t) in line and "fuse" in line]

    def node_cat(self, node, path):
        """A file as node sees it."""
        if not self.netns:
            return Path(path).read_text()
        return sh("nsenter", "-t", self.slurmd[node].pid, "-m", "cat", path).stdout


def leftovers(suite):
    """Processes left by the suite's jobs (their environment names a slurm.conf of the suite,
    slurmstepd included) and qvlmoefs daemons of its folders: "PID cmdline" lines."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            comm = open(f"/proc/{d}/comm").read().strip()
            env = open(f"/proc/{d}/environ", "rb").read()
        except OSError:
            continue
        if comm in ("slurmctld", "slurmd", "munged"):
            continue
        ours = f"SLURM_CONF={suite.t}/".encode() in env and b"SLURM_JOB_ID=" in env
        if ours or comm == "slurmstepd" or (comm == "qvlmoefs" and str(suite.t) in cmd):
            found.append(f"{d} {cmd.strip()}")
    return found


# -------------------------------------------------------------------------------- the fixtures


def _need():
    if os.geteuid() != 0:
        pytest.skip("the cluster suite needs root (daemons, namespaces, mounts)")
    missing = [b for b in SLURM_BINS if not shutil.which(b)]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: tests/cluster/deps.sh installs them")


@pytest.fixture(scope="session")
def suite():
    _need()
    s = Suite()
    try:
        s.start_munge()
        yield s
    finally:
        s.stop()
        for line in open("/proc/self/mounts").read().splitlines()[::-1]:  # never rm into a mount
            if line.split()[1].startswith(f"{s.t}/"):
                subprocess.run(["umount", "-l", line.split()[1]], stderr=subprocess.DEVNULL)
        mounted = [x for x in open("/proc/self/mounts") if f"{s.t}/" in x]
        if not os.environ.get("QVC_KEEP") and not mounted:
            shutil.rmtree(s.t, ignore_errors=True)


def _cluster(suite, name, nodes, netns):
    c = Cluster(suite, name, nodes, netns)
    try:
        c.start()
        print(f"\n{name}: Slurm up in {c.start_s:.1f} s")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def one(suite):
    """The one-node cluster."""
    yield from _cluster(suite, "one", {"localhost": "127.0.0.1"}, False)


@pytest.fixture(scope="session")
def two(suite):
    """The two-node cluster, each node in namespaces of its own."""
    yield from _cluster(suite, "two", {"node1": "10.231.0.11", "node2": "10.231.0.12"}, True)


@pytest.fixture
def clean(suite):
    """After the test: nothing of the suite mounted on any node, no process of its jobs."""
    clusters = []
    yield clusters
    for c in clusters:
        for n in c.nodes:
            left = wait_for(lambda: not c.node_mounts(n), 15) or c.node_mounts(n)
            assert left is True, f"{n}: still mounted: {left}"
    left = wait_for(lambda: not leftovers(suite), 15) or leftovers(suite)
    assert left is True, f"left running: {left}"


def job_env(suite, cluster, **kw):
    """The environment train.py reads, plus the batch script's variables."""
    e = {"QVC_SRC": str(suite.src), "QVC_EP": str(EP), "QVC_OUT": str(suite.t / "out" / kw.pop("out"))}
    Path(e["QVC_OUT"]).mkdir(mode=0o1777, exist_ok=True)
    Path(e["QVC_OUT"]).chmod(0o1777)
    e.update({k: str(v) for k, v in kw.items()})
    return e


def results(dirpath):
    """{rank: result} of the tasks' rank-R.json files."""
    return {int(p.stem.split("-")[1].split(".")[0]): json.loads(p.read_text())
            for p in Path(dirpath).glob("rank-*.json")}


# ----------------------------------------------------------------------------- the tally line

# the integration suite's closing line, the same hooks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from tally import (pytest_collectreport, pytest_runtest_logreport,  # noqa: E402,F401
                   pytest_sessionfinish, pytest_terminal_summary)
