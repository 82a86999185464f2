"""A worker rank of an Allegro rank group, started by allegro.parallel_pool.RankGroup (never by hand):

    python -m allegro.parallel_worker --rank R --world P --cfg C --seq S --port PORT --device cuda:R ...

It joins the group through rank 0's store on the loopback address, then follows rank 0's commands, one
JSON line each on stdin:
  {"op": "load", "config": {...}, "dtype": "bfloat16", "tensors": [{name, shape, dtype[, format…]}, ...]}
      the DiT's config; its weights follow as broadcasts in that order (rank 0's weights as stored, quantised
      ones included, patches included: allegro/parallel_weights.py)
  {"op": "blocks", "call": {...}}      one run of the blocks (allegro.parallel.run_block_call)
  {"op": "ping", "id": N}              answered by setting the store key pong/N/<rank> (rank 0's liveness check)
  {"op": "exit"}
It exits when stdin closes (rank 0's process is gone, however it ended), and on any error after leaving
the reason in the store for rank 0. Pure PyTorch: the model is built from allegro/, not ComfyUI.
"""
import argparse
import json
import os
import queue
import sys
import threading
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from . import parallel_weights
from .parallel import BlockCall, ParallelLayout, RankContext, new_sequence_group, run_block_call, stop_key

NOTES_PREFIX = "allegro/"          # this package's keys in the group's store (torch's own use other prefixes)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--cfg", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    parser.add_argument("--timeout", type=float, required=True, help="seconds a collective may wait")
    return parser.parse_args(argv)


def read_commands() -> queue.Queue:
    """Rank 0's commands, read on a thread so that a closed stdin ends the process even mid-collective."""
    commands = queue.Queue()

    def read():
        for line in sys.stdin:
            commands.put(line)
        os._exit(0)                     # rank 0's process is gone: nothing left to do

    threading.Thread(target=read, name="allegro-commands", daemon=True).start()
    return commands


def main(argv=None):
    args = parse_arguments(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    timeout = timedelta(seconds=args.timeout)
    commands = read_commands()
    store = dist.TCPStore("127.0.0.1", args.port, None, False, timeout=timeout)
    notes = dist.PrefixStore(NOTES_PREFIX, store)
    notes.set(f"ready/{args.rank}", str(os.getpid()))
    dist.init_process_group(args.backend, store=store, rank=args.rank, world_size=args.world, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    layout = ParallelLayout(args.cfg, args.seq)
    context = RankContext(args.rank, layout, new_sequence_group(layout, args.rank, timeout), device)
    model = None
    with torch.inference_mode():
        while True:
            command = json.loads(commands.get())
            try:
                if command["op"] == "load":
                    model = parallel_weights.receive(command, device)
                    dist.barrier()               # rank 0 learns that every rank holds the model
                elif command["op"] == "blocks":
                    call = BlockCall.from_dict(command["call"])
                    key = stop_key(call.call_id)
                    context.stop_requested = lambda: notes.check([key])
                    run_block_call(model, context, call)
                elif command["op"] == "ping":
                    notes.set(f"pong/{command['id']}/{args.rank}", "1")
                elif command["op"] == "exit":
                    break
                else:
                    raise ValueError(f"unknown command {command['op']!r}")
            except Exception as error:           # tell rank 0 why, then leave: the group cannot go on without us
                traceback.print_exc()
                notes.set(f"error/{args.rank}", f"{type(error).__name__}: {error}")
                sys.stdout.flush()
                os._exit(1)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)                          # skip the interpreter's slow teardown: rank 0 is waiting


if __name__ == "__main__":
    main()
