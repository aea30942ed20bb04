"""Options as users write them: exclude= patterns by every route (command line, mount -t,
fstab), one parser for the mount, inspect and stage, numbers checked with their range and
slicing options bounded, exclude= deciding as Python's re.match does (or refused), the log of
a detached daemon (log= never a link or a FIFO, names that cannot forge its lines), the fsname
mount(8) shows, and the mount helper passing options through unmangled.

The mount(8) routes run in a private mount namespace (helpers.in_private_ns): /sbin there is
an overlay that holds the mount helper, so nothing is installed on the machine and the mount
itself is seen, checked and unmounted inside the namespace only.
"""
import json
import os
import re
import signal
import subprocess

import pytest

import helpers
from checkview.contract import rename
from checkview.reader import read_header
from helpers import QV, ROOT, check_view, mountpoint, run, single_line, wait_for, write_st
from support_daemon import unmount

# A regex that means something else once a backslash is lost (\d would become d and match
# nothing) and that holds a comma: the input layernorms go, with the default's _extra_state.
PATTERN = r".*(_extra_state|layers\.\d{1,3}\.input_layernorm).*"
ESCAPED = PATTERN.replace(",", "\\,")  # the one escape: a comma of the pattern is "\,"
QUOTED = f'"{PATTERN}"'  # or, through mount(8) and fstab, libmount's double quotes
HELPER = ROOT / "mount-scripts" / "mount.fuse.qvlmoefs"
CHECK_VIEW = ROOT / "tests" / "check_view.py"


def index_keys(view_index_text):
    """The weight_map keys of an index's text."""
    return json.loads(view_index_text)["weight_map"].keys()


def assert_pattern_applied(keys):
    """The view left out exactly what PATTERN matches: input layernorms gone, others kept."""
    __tracebackhide__ = True
    assert not [k for k in keys if ".input_layernorm" in k or "_extra_state" in k], sorted(keys)
    assert [k for k in keys if ".post_attention_layernorm" in k], "too much left out"


def test_exclude_as_written_on_the_command_line(ckpt, mount):
    """`-o exclude=REGEX` gives the regex its backslashes (libfuse's parser dropped them, so
    `\\d` became `d` and excluded nothing); `\\,` is the comma of the pattern."""
    m = mount(ckpt["native"], None, "-o", f"ro,exclude={ESCAPED},allow_other")
    check_view(ckpt["native"], m, "--view", "hf", "--exclude", PATTERN)
    assert_pattern_applied(index_keys((m / "model.safetensors.index.json").read_text()))


def in_private_ns(tmp, script, **env):
    """Run script as root in helpers.in_private_ns (writes to /sbin and /usr/local land under
    tmp), with the mount helper made for this build in /sbin; $MNT and every other mount made
    there is unmounted when it ends. Asserts it succeeded; returns the CompletedProcess."""
    __tracebackhide__ = True
    why = helpers.private_ns_missing()
    if why:
        pytest.skip(why)
    install = r"""
sbin=$(readlink -f /sbin)
sed "s|@BIN@|$QV|" "$HELPER" > "$sbin/mount.fuse.qvlmoefs"
chmod 755 "$sbin/mount.fuse.qvlmoefs"
"""
    mnt = tmp / "m"
    mnt.mkdir(exist_ok=True)
    env = {**os.environ, "QV": str(QV), "HELPER": str(HELPER), "MNT": str(mnt),
           "CHECK_VIEW": str(CHECK_VIEW), **{k: str(v) for k, v in env.items()}}
    p = helpers.in_private_ns(tmp, install + script, cwd=tmp, env=env, timeout=120)
    assert p.returncode == 0, helpers._show(["in_private_ns", script], p.returncode, p.stdout,
                                            p.stderr)
    return p


# mount(8) with the pattern in -o, or an fstab line (mount -T FILE), escaped or quoted
CHECK_AND_PRINT = r"""
/usr/bin/python3 "$CHECK_VIEW" "$SRC" "$MNT" --view hf --exclude "$PATTERN" >&2
cat "$MNT/model.safetensors.index.json"
umount "$MNT"
"""
ROUTES = {
    "mount_t-escaped": ("mount_t", ESCAPED), "mount_t-quoted": ("mount_t", QUOTED),
    "fstab-escaped": ("fstab", ESCAPED), "fstab-quoted": ("fstab", QUOTED),
}


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_exclude_as_written_through_mount(ckpt, fuse, tmp, route):
    """Through mount(8) and the helper (`mount -t fuse.qvlmoefs ... -o`, and an fstab line),
    the pattern reaches the regex as written, backslashes and comma included."""
    how, written = route
    opts = f"ro,exclude={written},nofail"
    if how == "mount_t":
        cmd = 'mount -t fuse.qvlmoefs "$SRC" "$MNT" -o "$OPTS"\n'
    else:
        (tmp / "fstab").write_text(f"{ckpt['native']} {tmp / 'm'} fuse.qvlmoefs {opts} 0 0\n")
        cmd = 'mount -T "$PWD/fstab" "$MNT"\n'
    out = in_private_ns(tmp, cmd + CHECK_AND_PRINT, SRC=ckpt["native"], OPTS=opts,
                        PATTERN=PATTERN).stdout
    assert_pattern_applied(index_keys(out))


def test_exclude_cut_at_a_comma_is_refused(ckpt, mount, tmp):
    """An unescaped comma inside {m,n} ends the option: the mount refuses, showing how to
    write the comma (before, libfuse said only `unknown option(s): -o 3}.*`)."""
    p = mount.fail(ckpt["native"], tmp / "m", "-o", f"exclude={PATTERN}", stderr=subprocess.STDOUT)
    assert "(exclude=" + PATTERN.split(",")[0] + "\\," in single_line(p)


# options the mount refuses: inspect and stage refuse them with the same message
REFUSED = {"typo": "veiw=hf", "ep_size": "ep_size=-1", "readahead": "readahead_kb=-5",
           "exclude_cut": "exclude=x{1,3}", "unknown_fuse": "max_reed=4"}


@pytest.mark.parametrize("opt", REFUSED.values(), ids=REFUSED.keys())
def test_inspect_and_stage_refuse_what_the_mount_refuses(ckpt, mount, tmp, opt):
    """One parser for the mount and its subcommands: `inspect -o veiw=hf` exited 0 with the
    default view while the mount failed."""
    want = single_line(mount.fail(ckpt["hf"], tmp / "m", "-o", opt, stderr=subprocess.STDOUT))
    for sub in ("inspect", "stage"):
        p = run(QV, sub, ckpt["hf"], "-o", opt, check=False, stderr=subprocess.STDOUT)
        assert p.returncode != 0, f"{sub} -o {opt} exited 0"
        assert single_line(p) == want, f"{sub}: {p.stdout!r}, the mount: {want!r}"


NUMBERS = {  # option: the accepted range the message must give
    "ep_size=-1": "from 1 to 65536", "ep_size=4294967297": "from 1 to 65536",
    "ep_size=4,ep_rank=-1": "from 0 to 65535", "ep_size=2,ep_shard_size=-2": "from 1 to 65536",
    "readahead_kb=-5": "from 0 to 1048576", "readahead_kb=2097152": "from 0 to 1048576",
    "shard_size=-1": "from 1 to 18446744073709551615", "gpu=-1": "from 0 to 1024",
}


@pytest.mark.parametrize("opt, rng", NUMBERS.items(), ids=NUMBERS.keys())
def test_numeric_option_out_of_range_refused(ckpt, mount, tmp, opt, rng):
    """A negative or too large number fails before mounting with one line giving the range
    (before, ep_size=-1 became 4294967295 and readahead_kb=-5 a 1 GiB readahead)."""
    out = single_line(mount.fail(ckpt["hf"], tmp / "m", "-o", opt, stderr=subprocess.STDOUT))
    assert f"expected a whole number {rng}" in out, out


def bdi_readahead_kb(view):
    """The mount's readahead (its bdi's read_ahead_kb), or None where sysfs does not say."""
    d = os.stat(view).st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(d)}:{os.minor(d)}/read_ahead_kb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def test_readahead_kb_zero_means_none(ckpt, mount):
    """readahead_kb=0 is no readahead, as the number says (it used to mean the 4096 default)."""
    m = mount(ckpt["hf"], None, "-o", "readahead_kb=0")
    ra = bdi_readahead_kb(m)
    if os.getuid() != 0 or ra is None:
        pytest.skip("only a daemon run as root sets the readahead, read back through sysfs")
    assert ra == 0


def daemon_pid(mnt):
    """The pid of the qvlmoefs daemon serving mnt (named by its command line)."""
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "qvlmoefs" and str(mnt) in argv:
            return int(d)
    raise AssertionError(f"no daemon serves {mnt}")


def test_detached_daemon_logs_to_log_file(ckpt, mount, tmp):
    """-o log=FILE (relative: the daemon resolves it before it changes folder) gets a
    detached daemon's messages, SIGUSR1's counters among them (with no /dev/log, as here,
    they went nowhere)."""
    m = tmp / "m"
    m.mkdir()
    p = run(QV, ckpt["hf"], m, "-o", "log=daemon.log", cwd=tmp)
    try:
        assert "go nowhere" not in p.stderr
        (m / "config.json").read_bytes()
        os.kill(daemon_pid(m), signal.SIGUSR1)
        log = tmp / "daemon.log"
        assert wait_for(lambda: "stats {" in log.read_text(), timeout=10), log.read_text()
        line = next(x for x in log.read_text().splitlines() if "stats {" in x)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ qvlmoefs\[\d+\]: stats \{", line), line
        assert json.loads(line.split("stats ", 1)[1])["requests"] > 0
    finally:
        mount.umount(m)


def test_log_file_that_cannot_be_opened_is_refused(ckpt, mount, tmp):
    """log=FILE in a missing folder fails before mounting, naming the file."""
    out = single_line(mount.fail(ckpt["hf"], tmp / "m", "-o", f"log={tmp}/no/such.log",
                                 stderr=subprocess.STDOUT))
    assert "no/such.log" in out and "No such file" in out, out


def test_detached_daemon_without_syslog_falls_back_to_stderr(ckpt, fuse, tmp):
    """With no syslog listening (/dev/log covered in a private namespace, wherever the machine
    has one) and no log=, a detached daemon keeps writing to its stderr when that is a file;
    when it is a pipe, the mount says, before detaching, that its messages go nowhere."""
    script = r"""
if [ -e /dev/log ]; then mount --bind /dev/null /dev/log; fi
"$QV" "$SRC" "$MNT" 2>>stderr.log
pid=$(pgrep -f -x "$QV $SRC $MNT")
kill -USR1 "$pid"
for i in $(seq 100); do grep -q 'stats {' stderr.log && break; sleep 0.1; done
umount "$MNT"
"$QV" "$SRC" "$MNT" 2>&1 | cat > pipe.log
umount "$MNT"
"""
    in_private_ns(tmp, script, SRC=ckpt["hf"])
    assert "stats {" in (tmp / "stderr.log").read_text()
    assert "go nowhere" in (tmp / "pipe.log").read_text()


def mountinfo_source(mnt):
    """The source field /proc/self/mountinfo shows for the mount at mnt."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if left.split()[4] == str(mnt):
                return right.split()[1]
    raise AssertionError(f"{mnt} not in /proc/self/mountinfo")


def test_fsname_default_is_the_absolute_source(ckpt, mount, tmp):
    """The source mount(8) and /proc/mounts show is the source's absolute path, also when the
    command named it relative to the current folder."""
    src = ckpt["hf"]
    m = tmp / "m"
    m.mkdir()
    run(QV, src.name, m, cwd=src.parent)
    try:
        assert mountinfo_source(m) == str(src.resolve())
    finally:
        mount.umount(m)


def test_fsname_given_is_kept(ckpt, mount):
    """-o fsname=NAME is what mountinfo shows (it was overridden by the source)."""
    m = mount(ckpt["hf"], None, "-o", "fsname=qv-weights")
    assert mountinfo_source(m) == "qv-weights"


def test_help_says_where_logs_go():
    """--help names log=FILE and where a detached daemon's messages go without it."""
    out = run(QV, "--help").stdout
    assert "-o log=FILE" in out and "syslog" in out and "Logs:" in out


STAGE_NUMBERS = {"--device": ("-1", "from 0 to 1024"), "--samples": ("1e3", "from 0 to 1000000000"),
                 "--slots": ("0", "from 1 to 256"), "--slot-mib": ("99999", "from 1 to 4096")}


@pytest.mark.parametrize("flag", STAGE_NUMBERS, ids=STAGE_NUMBERS.keys())
def test_stage_numbers_checked(ckpt, flag):
    """stage's numeric flags are checked like the -o numbers (atoi made --device -1 a device)."""
    value, rng = STAGE_NUMBERS[flag]
    p = run(QV, "stage", ckpt["hf"], flag, value, check=False, stderr=subprocess.STDOUT)
    assert p.returncode != 0 and f"expected a whole number {rng}" in single_line(p), p.stdout


# --------------------------------------------------------------------------- option arithmetic


# -o options: words the one-line error must contain
WRAPPING_OPTIONS = {
    # 65536 x 65536 folders wrapped to 0 in 32 bits: a zero-size plan table, read anyway
    "wraps_to_zero": ("ep_size=65536,ep_shard_size=65536",
                      ["4294967296 folders", "at most 65536"]),
    # 4000000000 plans asked for at once
    "huge": ("ep_size=4000000000", ["ep_size=4000000000", "from 1 to 65536"]),
    # %u read "-1" as 4294967295
    "negative": ("ep_size=-1", ["ep_size=-1", "from 1 to 65536"]),
    "negative_rank": ("ep_size=2,ep_rank=-1", ["ep_rank=-1", "from 0 to 65535"]),
    "trailing_junk": ("ep_size=2x", ["ep_size=2x", "whole number"]),
    "too_many_folders": ("ep_size=10,ep_shard_size=65536", ["655360 folders", "at most 65536"]),
    # the expert count bounds ep_size, and the message gives the range
    "more_ranks_than_experts": ("ep_size=65536", ["ep_size=65536 exceeds its 10 experts",
                                                  "from 1 to 10"]),
}


@pytest.mark.parametrize("case", WRAPPING_OPTIONS.values(), ids=WRAPPING_OPTIONS.keys())
def test_option_arithmetic_is_bounded(ckpt, mount, tmp, case):
    """Slicing options are bounded (by the expert count too) and fail fast with one line."""
    opts, words = case
    p = mount.fail(ckpt["e10"], tmp / "m", "-o", opts, stderr=subprocess.STDOUT, timeout=20)
    lines = [x for x in p.stdout.rstrip("\n").split("\n") if "do not divide" not in x]
    assert len(lines) == 1, f"-o {opts}: not one error line: {p.stdout!r}"
    for w in words:
        assert w in lines[0], f"-o {opts}: {w!r} not in {lines[0]!r}"


# ----------------------------------------------------------- exclude= decides as re.match does


# \d inside brackets: POSIX read [\d] as "a backslash or d", so this excluded nothing
BRACKET_PATTERN = r".*layers\.[\d]+\.self_attn\..*"


def shard_keys(folder):
    """The tensor names of every *.safetensors file directly in folder."""
    keys = set()
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            keys |= set(read_header(os.path.join(folder, name))[0]) - {"__metadata__"}
    return keys


def test_exclude_class_escape_in_brackets_as_re_match(ckpt, mount):
    """exclude= with [\\d] leaves out exactly the HF names Python's re.match matches: the
    attention tensors of every layer, nothing else (the expected set is Python's decision
    over the source's real names)."""
    src = ckpt["native"]
    m = mount(src, None, "-o", f"exclude={BRACKET_PATTERN}")
    rx = re.compile(BRACKET_PATTERN)
    hf = {k: rename(k, "native", "hf", "", rx) for k in shard_keys(src)}
    want = {v for v in hf.values() if v is not None}
    left_out = {k for k, v in hf.items() if v is None}
    assert left_out and all(".self_attn." in k for k in left_out), sorted(left_out)
    assert shard_keys(m) == want
    index = json.loads((m / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == want
    check_view(src, m, "--view", "hf", "--exclude", BRACKET_PATTERN)


@pytest.mark.parametrize("pattern, why", [
    (r".*\bself_attn.*", "word boundaries"),
    (r"(?!model\.visual).*", "(?...) groups"),
    (r"(a)\1", "backreferences"),
    (r".*layers\.[\d\W]+", r"\D, \W or \S inside [...]"),
])
def test_exclude_without_ere_equivalent_refused(ckpt, mount, tmp, pattern, why):
    """What POSIX ERE cannot say is refused before mounting, in one line naming the pattern and
    the construct, instead of being taken literally."""
    out = single_line(mount.fail(ckpt["native"], tmp / "m", "-o", f"exclude={pattern}",
                                 stderr=subprocess.STDOUT))
    assert f"exclude={pattern}: " in out and why in out, out


# -------------------------------------------------------------------- log= files and log lines


@pytest.mark.parametrize("target_exists", [True, False], ids=["link", "dangling_link"])
def test_log_symlink_refused(ckpt, mount, tmp, target_exists):
    """log= naming a symbolic link (planted where the log goes) is refused before mounting,
    naming the file; the file it points to is neither written nor created."""
    target, link = tmp / "target", tmp / "daemon.log"
    if target_exists:
        target.write_text("keep\n")
    link.symlink_to(target)
    out = single_line(mount.fail(ckpt["hf"], tmp / "m", "-o", f"log={link}",
                                 stderr=subprocess.STDOUT))
    assert f"log={link}: " in out and "symbolic link" in out, out
    if target_exists:
        assert target.read_text() == "keep\n"
    else:
        assert not target.exists()


def test_log_fifo_refused_without_blocking(ckpt, mount, tmp):
    """log= naming a FIFO nobody reads is refused at once (the open blocked for good)."""
    fifo = tmp / "daemon.log"
    os.mkfifo(fifo)
    out = single_line(mount.fail(ckpt["hf"], tmp / "m", "-o", f"log={fifo}",
                                 stderr=subprocess.STDOUT, timeout=20))
    assert f"log={fifo}: not a regular file" in out, out


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ qvlmoefs\[\d+\]: "
FORGED = "2030-01-01T00:00:00Z qvlmoefs[1]: forged line"


@pytest.mark.parametrize("where", ["tensor", "file"])
def test_newline_in_a_name_cannot_forge_a_log_line(mount, tmp, where):
    """A tensor name (an unknown dtype refuses the mount, naming it) or a file name (a FIFO in
    the source is left out, naming it) holding a newline is logged as one line, the newline
    written as \\n, in the log file and on stderr alike."""
    src, log, m = tmp / "src", tmp / "daemon.log", tmp / "m"
    src.mkdir()
    m.mkdir()
    name = "w\n" + FORGED
    if where == "tensor":
        write_st(src / "model.safetensors", None, {name: ("XX", [1], b"\0\0")})
        p = mount.fail(src, m, "-o", f"log={log}")
    else:
        write_st(src / "model.safetensors", None, {"w": ("BF16", [1], b"\0\0")})
        os.mkfifo(src / name)
        p = run(QV, src, m, "-o", f"log={log}")
    for lines in (log.read_text().splitlines(), p.stderr.splitlines()):
        assert any("w\\n" + FORGED in x for x in lines), lines
        assert not any(x.startswith(FORGED) for x in lines), lines
    assert all(re.match(STAMP, x) for x in log.read_text().splitlines())
    assert all(x.startswith("qvlmoefs: ") for x in p.stderr.splitlines()), p.stderr


# ------------------------------------------------------------------ the mount helper's quoting


RECORDER = """#!/usr/bin/python3
import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""


def _helper(tmp, binary):
    """A copy of the mount helper with @BIN@ made binary, as make install writes it."""
    h = tmp / "mount.fuse.qvlmoefs"
    h.write_text(HELPER.read_text().replace("@BIN@", str(binary)))
    h.chmod(0o755)
    return h


# helper arguments after SOURCE MOUNTPOINT: the -o string the daemon must get (None: no -o)
HELPER_CASES = {
    "drops_fstab_words": (["-o", "ro,view=native,nofail"], "ro,view=native"),
    "all_dropped": (["-o", "nofail,_netdev"], None),
    "empty_fields": (["-o", "ro,,view=hf,"], "ro,view=hf"),
    # libfuse's escaped comma is part of the value: "auto" here is no fstab word
    "escaped_comma": (["-o", r"ro,exclude=a\,auto,nofail"], r"ro,exclude=a\,auto"),
    # libmount's quoting: the quotes go, the commas inside get their backslash; the
    # backslashes of exclude= are the regex's and stay, those of other values get libfuse's
    "quoted_value": (["-o", r'exclude="x{1,2}\d\,",defaults,ro'], r"exclude=x{1\,2}\d\,,ro"),
    "quoted_whole": (["-o", r'"exclude=x{1,2}\d",ro'], r"exclude=x{1\,2}\d,ro"),
    "quoted_other": (["-o", r'fsname="a\b,c"'], r"fsname=a\\b\,c"),
    # glob characters stay literal even when a file in the current folder matches them
    "glob_star": (["-o", "exclude=x*"], "exclude=x*"),
    "glob_class": (["-o", "ro,exclude=[ab]?"], "ro,exclude=[ab]?"),
    "two_o": (["-o", "ro", "-o", r"exclude=y\,z"], r"ro,exclude=y\,z"),
    "joined_o": (["-oro,exclude=.*_extra_state.*"], "ro,exclude=.*_extra_state.*"),
}


@pytest.mark.parametrize("case", HELPER_CASES.values(), ids=HELPER_CASES.keys())
def test_mount_helper_passes_options_unmangled(tmp, case):
    """mount.fuse.qvlmoefs hands the daemon the options as written, minus fstab-only words:
    no word splitting inside escaped or quoted commas, no globbing (before, `for o in $opts`
    split escaped commas, so a value could lose a piece that looked like an fstab word, and
    expanded globs against the current folder)."""
    args, want = case
    rec = tmp / "rec.py"
    rec.write_text(RECORDER)
    rec.chmod(0o755)
    h = _helper(tmp, rec)
    for bait in ("exclude=x-globbed", "exclude=a1"):  # what the globs would expand to
        (tmp / bait).write_text("")
    out = tmp / "argv.json"
    run(h, "SRC", "MNT", *args, cwd=tmp, env={**os.environ, "RECORD": str(out)})
    got = json.loads(out.read_text())
    assert got == ["SRC", "MNT"] + ([] if want is None else ["-o", want]), got


# a regex with a comma and glob characters, written with libmount's quotes or "\," (the
# one escape of exclude=: its backslashes are the regex's)
GLOB_PATTERN = r".*(_extra_state|layers\.[0-9]{1,3}\.input_layernorm).*"
WRITTEN = {"quoted": f'exclude="{GLOB_PATTERN}"',
           "escaped": "exclude=" + GLOB_PATTERN.replace(",", "\\,")}


@pytest.mark.parametrize("written", WRITTEN.values(), ids=WRITTEN.keys())
def test_mount_helper_mounts_with_a_comma_in_exclude(fuse, ckpt, tmp, written):
    """Through the helper (as mount -t and fstab run it), exclude= with a comma and glob
    characters reaches the daemon intact: the view leaves out exactly what it matches."""
    h = _helper(tmp, QV)
    m = tmp / "m"
    m.mkdir()
    run(h, ckpt["native"], m, "-o", f"ro,{written},nofail", cwd=tmp, timeout=60)
    try:
        assert mountpoint(m)
        check_view(ckpt["native"], m, "--view", "hf", "--exclude", GLOB_PATTERN)
        assert not any(".input_layernorm" in k for k in
                       json.loads((m / "model.safetensors.index.json").read_text())["weight_map"])
    finally:
        unmount(m)
