"""Two nodes, two real slurmd in namespaces of their own: doc/cluster.md's batch script as
written, 2 nodes x 4 tasks, EP size 8, -o ep_shared."""
import json
import sys

from conftest import EP, ROOT, doc_block, job_env, results

sys.path.insert(0, str(ROOT / "tests"))
from checkview import ep as ep_check  # noqa: E402


def test_two_nodes_eight_ranks(two, suite, clean):
    """Each node mounts once; global rank SLURM_PROCID reads ep-rank-SLURM_PROCID on its own
    node and finds every tensor right; each node read from the source only its own ranks'
    experts and the dense bytes once."""
    clean.append(two)
    mnt = suite.t / "local" / "ranks"  # each node's own tmpfs
    e = job_env(suite, two, out="two", SRC=suite.src, MNT=mnt, OPTS="ep_shared")
    jid = two.sbatch(doc_block("batch-script"), env=e, name="two")  # its #SBATCH: 2 x 4
    j = two.wait_job(jid)
    out = two.output(jid)
    assert (j["JobState"], j["ExitCode"], j["NumNodes"]) == ("COMPLETED", "0:0", "2"), (j, out)
    res = results(suite.t / "out" / "two")
    assert sorted(res) == list(range(EP)), out
    nodes = {"node1": [0, 1, 2, 3], "node2": [4, 5, 6, 7]}
    for node, ranks in nodes.items():
        for r in ranks:
            x = res[r]
            assert x["node"] == node and x["errors"] == [] and x["tensors"] > 0, x
            assert x["reader"].startswith("safetensors"), x
        mounted = [x for x in out.splitlines() if x.startswith(f"{node}: ") and f"-> {mnt} " in x]
        assert len(mounted) == 1, out  # one mount per node
        view = json.loads((suite.t / "out" / "two" / f"view-{node}.json").read_text())
        assert view["ep_size"] == EP, view
        stats = json.loads((suite.t / "out" / "two" / f"stats-{node}.json").read_text())
        # train.py reads the tensor files only: the pass-through files (config.json...),
        # which nodebytes counts, stay unread
        want = ep_check.nodebytes(str(suite.src), EP, ranks) - sum(
            f.stat().st_size for f in suite.src.iterdir()
            if not f.name.endswith((".safetensors", ".safetensors.index.json")))
        got = stats["bytes_from_sources"]
        assert want <= got <= want * 1.01, f"{node} read {got} source bytes, its ranks need {want}"
