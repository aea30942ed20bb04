"""Run a worker on W CPU processes (gloo), importing NeMo Automodel once instead of W times.

    python am_launch.py W MODULE ARGS...

Imports MODULE (an am_*_worker.py beside this file, which imports the Automodel modules it
needs at its top), then forks W children; child R joins a gloo process group of W ranks
through a FileStore and calls MODULE.main(ARGS). Importing nemo_automodel costs about 10 s of
CPU per process (it pulls in transformers and torch._inductor); forking after the import makes
that cost paid once, which on a 2-core machine is the difference between about 35 s and 12 s.
torch.distributed.run would work as well (each rank then imports for itself).

The exit status is 0 when every child exited 0; a child's traceback is printed prefixed with
its rank.
"""
import importlib
import os
import sys
import tempfile
import traceback
from pathlib import Path


def child(rank, world, store, module, args):
    """Body of child rank: join the group, run module.main(args), leave; never returns."""
    import torch.distributed as dist

    code = 1
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(world))
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        try:
            code = module.main(args) or 0
        finally:
            dist.destroy_process_group()
    except BaseException:
        sys.stdout.flush()
        text = traceback.format_exc()
        sys.stderr.write("".join(f"[rank{rank}]: {line}\n" for line in text.rstrip("\n").split("\n")))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv):
    """Fork argv[1] children running argv[2].main(argv[3:]); return 0 when all exited 0."""
    world, name, args = int(argv[1]), argv[2], argv[3:]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(name)
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="am-launch.") as d:
        store = os.path.join(d, "store")
        pids = {}
        for rank in range(world):
            pid = os.fork()
            if pid == 0:
                child(rank, world, store, module, args)
            pids[pid] = rank
        failed = []
        while pids:
            pid, status = os.wait()
            rank = pids.pop(pid, None)
            if rank is not None and os.waitstatus_to_exitcode(status) != 0:
                failed.append(f"rank {rank}: exit status {os.waitstatus_to_exitcode(status)}")
                if len(failed) == 1:  # a rank that died leaves the others waiting in a collective
                    for other in pids:
                        os.kill(other, 15)
    if failed:
        print("am_launch: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
