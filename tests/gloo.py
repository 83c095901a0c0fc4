"Run a test's worker on several gloo processes on this machine, for the distributed tests"
import os, socket
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank(rank, world, port, fn, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    fn(rank, world, out)
    dist.barrier()  # no rank leaves while another still needs it in a collective
    # gloo's teardown (destroy_process_group, or the interpreter's exit) sometimes aborts with "terminate called
    # without an active exception" once the peer has gone (about 1 run in 15 on a loaded machine): skip it,
    # the results are written and every rank is past its last collective
    os._exit(0)


def spawn(fn, out, world:int=2):
    "`fn(rank, world, out)` on `world` gloo processes (a module-level function, so that it pickles)"
    mp.spawn(_rank, args=(world, free_port(), fn, str(out)), nprocs=world, join=True)
