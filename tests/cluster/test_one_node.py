"""One node: doc/cluster.md's batch script as written, under a real slurmd."""
import os
import time

from conftest import EP, doc_block, job_env, results, wait_for


def batch(one, suite, clean, out, *opts, **env):
    """Submit the doc's batch script on the one node, 8 tasks; the job ID."""
    clean.append(one)
    e = job_env(suite, one, out=out, SRC=suite.src, MNT=suite.t / "mnt" / "ranks", **env)
    return one.sbatch(doc_block("batch-script"), "--nodes=1", "--ntasks-per-node=8", *opts,
                      env=e, name=out)


def ranks_ok(suite, out, want=range(EP)):
    """Every rank's task loaded its folder with the official safetensors and found it right."""
    res = results(suite.t / "out" / out)
    assert sorted(res) == list(want), f"results of ranks {sorted(res)}"
    for r, x in res.items():
        assert x["errors"] == [] and x["tensors"] > 0, f"rank {r}: {x}"
        assert x["reader"].startswith("safetensors"), f"rank {r} read with {x['reader']}"
        assert x["folder"].endswith(f"/ep-rank-{r}")
    return res


def test_batch_job(one, suite, clean):
    """The job mounts in a step of one task per node, its 8 tasks each load their rank folder
    and compare it with the source, and the job's end unmounts."""
    jid = batch(one, suite, clean, "batch")
    j = one.wait_job(jid)
    out = one.output(jid)
    assert (j["JobState"], j["ExitCode"]) == ("COMPLETED", "0:0"), out
    ranks_ok(suite, "batch")
    assert out.count(f"-> {suite.t}/mnt/ranks (ep_size=8)") == 1, out


def test_second_job_shares_the_mount(one, suite, clean):
    """A job that starts while the first runs shares its mount; the one that ends first does
    not unmount it under the other, the last one does."""
    hold = suite.t / "hold-first"
    a = batch(one, suite, clean, "first", QVC_HOLD=hold, QVC_RECHECK=1)
    assert wait_for(lambda: len(results(suite.t / "out" / "first")) == EP, 120), one.output(a)
    b = batch(one, suite, clean, "second")
    jb = one.wait_job(b)
    assert (jb["JobState"], jb["ExitCode"]) == ("COMPLETED", "0:0"), one.output(b)
    assert one.job(a)["JobState"] == "RUNNING"
    ranks_ok(suite, "second")
    assert "already mounted" in one.output(b), one.output(b)
    assert one.node_mounts("localhost"), "the second job unmounted the first's mount"
    hold.touch()  # the first job's tasks now read their folders again, then end
    ja = one.wait_job(a)
    assert (ja["JobState"], ja["ExitCode"]) == ("COMPLETED", "0:0"), one.output(a)
    ranks_ok(suite, "first")
    assert not one.node_mounts("localhost")


def test_cancelled_job(one, suite, clean):
    """scancel while the tasks run: no mount, no daemon, no task left."""
    a = batch(one, suite, clean, "cancel", QVC_HOLD=suite.t / "never")
    assert wait_for(lambda: len(results(suite.t / "out" / "cancel")) == EP, 120), one.output(a)
    assert one.node_mounts("localhost")
    one.query("scancel", a, check=True)
    assert one.wait_job(a)["JobState"] == "CANCELLED"


def test_task_crash(one, suite, clean):
    """A task that aborts fails the job; its end unmounts all the same."""
    a = batch(one, suite, clean, "crash", QVC_CRASH=3)
    j = one.wait_job(a)
    assert j["JobState"] == "FAILED", (j, one.output(a))
    assert sorted(results(suite.t / "out" / "crash")) == [0, 1, 2, 4, 5, 6, 7]


def test_failed_mount_fails_the_job_first(one, suite, clean):
    """A source missing its last shard: the job fails before any task, the mount's one-line
    error in its output."""
    clean.append(one)
    e = job_env(suite, one, out="broken", SRC=suite.broken, MNT=suite.t / "mnt" / "ranks")
    a = one.sbatch(doc_block("batch-script"), "--nodes=1", "--ntasks-per-node=8", env=e, name="broken")
    j = one.wait_job(a)
    out = one.output(a)
    assert j["JobState"] == "FAILED", (j, out)
    assert results(suite.t / "out" / "broken") == {}, "tasks ran"
    assert "rank " not in out, out
    err = [x for x in out.splitlines() if x.startswith(f"qvlmoefs: {suite.broken}: ")]
    assert len(err) == 1, out  # the mount's own line, once; the wait step names the node
    assert f"qvlmoefs-slurm: localhost: not mounted at {suite.t}/mnt/ranks: {err[0]}" in out, out
