"""The administrator's way: mount-scripts/slurm's Prolog and Epilog, configured by the lines of
doc/cluster.md, for a job submitted as the doc shows, by a user other than root."""
import os
import subprocess

from conftest import EP, TEST_USER, doc_block, job_env, results, wait_for


def need_user():
    if subprocess.run(["id", TEST_USER], capture_output=True).returncode:
        import pytest
        pytest.skip(f"no user {TEST_USER} (tests/test-user.sh makes it)")


def submit(one, suite, out, user=None, **env):
    """doc/cluster.md's submit block and job.sh, the site's paths put in; the job ID."""
    root = f"{suite.t}/run"
    (suite.t / "work" / "job.sh").write_text(doc_block("prolog-job").replace("/run/qvlmoefs", root))
    (suite.t / "work" / "job.sh").chmod(0o755)
    submit = doc_block("prolog-submit").replace("/data/Qwen3-VL-30B-A3B", str(suite.src))
    e = dict(one.env, **job_env(suite, one, out=out, **env))
    e["PATH"] = f"{suite.t}/{'ubin' if user else 'bin'}:{e['PATH']}"
    argv = ["bash", "-euc", submit]
    if user:
        argv = ["runuser", "-u", user, "--"] + argv
    p = subprocess.run(argv, cwd=suite.t / "work", env=e, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Submitted batch job" in p.stdout, p.stdout + p.stderr
    return p.stdout.split()[-1]


def output(suite, jid):
    p = suite.t / "work" / f"slurm-{jid}.out"
    return p.read_text() if p.exists() else ""


def test_prolog_mounts_for_another_user(one, suite, clean):
    """A job of another user asks with --comment: the Prolog mounts as root with allow_other,
    the user's 8 tasks each read their rank folder, the Epilog unmounts."""
    need_user()
    clean.append(one)
    jid = submit(one, suite, "prolog", user=TEST_USER)
    j = one.wait_job(jid)
    out = output(suite, jid)
    assert (j["JobState"], j["ExitCode"]) == ("COMPLETED", "0:0"), (j, out, one.logs())
    res = results(suite.t / "out" / "prolog")
    uid = int(subprocess.run(["id", "-u", TEST_USER], capture_output=True, text=True).stdout)
    assert sorted(res) == list(range(EP)), out
    for r, x in res.items():
        assert x["errors"] == [] and x["tensors"] > 0 and x["uid"] == uid, x
    assert not os.path.exists(suite.t / "run" / "ep8"), os.listdir(suite.t / "run")


def test_prolog_counts_jobs(one, suite, clean):
    """Two jobs of the same view: the one that ends first leaves the mount to the other."""
    clean.append(one)
    hold = suite.t / "hold-prolog"
    a = submit(one, suite, "pa", QVC_HOLD=hold, QVC_RECHECK=1)
    assert wait_for(lambda: len(results(suite.t / "out" / "pa")) == EP, 120), output(suite, a)
    b = submit(one, suite, "pb")
    jb = one.wait_job(b)
    assert (jb["JobState"], jb["ExitCode"]) == ("COMPLETED", "0:0"), output(suite, b)
    assert one.job(a)["JobState"] == "RUNNING" and one.node_mounts("localhost")
    hold.touch()
    ja = one.wait_job(a)
    assert (ja["JobState"], ja["ExitCode"]) == ("COMPLETED", "0:0"), output(suite, a)
    assert all(x["errors"] == [] for x in results(suite.t / "out" / "pa").values())
