"""Rank 0's side of an Allegro rank group: the worker processes it owns and drives.

`RankGroup(layout, devices)` makes this process rank 0 (on devices[0]) and starts one worker process per
other device (`python -m allegro.parallel_worker`), which rendezvous through a store on 127.0.0.1. It
sends them the DiT once per set of weights (`load`), then runs the blocks of each DiT call with them
(`run_blocks`, called by a host's wrapper of the DiT's blocks stage). Workers stay up between calls and
end with `close()`, at interpreter exit, or by themselves when this process goes away.

Before each use the pool asks `alive()`, which pings every worker on its command pipe, so a worker killed
while idle is noticed before any work is sent to it. Failure never hangs: a worker that exits, fails or stops answering for `timeout_s` seconds turns into one
WorkerError naming the rank, its device and its last words; the group is then shut down, and the
caller may start a new one. Pure PyTorch.
"""
import atexit
import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from . import parallel_weights
from .dit_wrappers import INNER, NO_WRAPPERS, BlocksInput, DiTWrapper, Wrappers
from .parallel import BlockCall, Cancelled, ParallelLayout, RankContext, new_sequence_group, run_block_call, stop_key
from .parallel_worker import NOTES_PREFIX

LOG = logging.getLogger("allegro.parallel")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]      # the folder holding allegro/: the workers' cwd


class WorkerError(RuntimeError):
    """The rank group failed (a worker died, raised, or stopped answering); it has been shut down."""


class RankGroup:
    def __init__(self, layout: ParallelLayout, devices: list[str], timeout_s: float = 300.0,
                 start_timeout_s: float = 300.0):
        """devices: one per rank; devices[0] is this process's (rank 0), the others get a worker each.
        timeout_s: how long rank 0 waits on the others in any one collective before giving up."""
        if len(devices) != layout.world:
            raise ValueError(f"a {layout.cfg} x {layout.seq} rank layout needs {layout.world} devices, got {devices}")
        kinds = {torch.device(d).type for d in devices}
        if not kinds <= {"cpu", "cuda"} or len(kinds) != 1:
            raise ValueError(f"the ranks must be all CUDA GPUs or all CPU processes, got {devices}")
        self.layout, self.devices = layout, [str(torch.device(d)) for d in devices]
        self.device = torch.device(self.devices[0])
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self.workers: list[subprocess.Popen] = []
        self.logs: list[collections.deque] = []
        self.store = self.notes = self.context = None
        self.loaded_key = None
        self.call_id = 0
        self.pings = 0                 # liveness checks sent (alive())
        self.last_reports = None       # (status, blocks run) of every rank in the last call
        self.last_counts = []          # per replicated wrapper of the last call: every rank's copy's counts()
        self.state = "new"             # new → running → closed

    # --- lifetime ---------------------------------------------------------------------------------
    def start(self) -> "RankGroup":
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialised in this process (by another package?); "
                               "the Allegro rank group needs it for itself.")
        timeout = timedelta(seconds=self.timeout_s)
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timeout, wait_for_workers=False)
        self.notes = dist.PrefixStore(NOTES_PREFIX, self.store)
        self.state = "running"
        atexit.register(self.close)
        try:
            for rank in range(1, self.layout.world):
                self._spawn(rank)
            self._wait_until_ready()
            dist.init_process_group(self.backend, store=self.store, rank=0, world_size=self.layout.world,
                                    timeout=timeout, device_id=self.device if self.device.type == "cuda" else None)
            self.context = RankContext(0, self.layout, new_sequence_group(self.layout, 0, timeout), self.device)
        except Exception as error:
            _reraise(self._failure("starting the worker processes", error), error)
        LOG.info("Allegro rank group: %d ranks (%d x %d) on %s over %s", self.layout.world, self.layout.cfg,
                 self.layout.seq, ", ".join(self.devices), self.backend)
        return self

    def _spawn(self, rank: int):
        command = [sys.executable, "-m", "allegro.parallel_worker", "--rank", str(rank),
                   "--world", str(self.layout.world), "--cfg", str(self.layout.cfg), "--seq", str(self.layout.seq),
                   "--port", str(self.store.port), "--device", self.devices[rank], "--backend", self.backend,
                   "--timeout", str(self.timeout_s)]
        # Own session: a Ctrl+C meant for ComfyUI does not hit the workers mid-collective; they end when
        # rank 0 tells them to or when their stdin (this process) goes away.
        worker = subprocess.Popen(command, cwd=PACKAGE_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                  start_new_session=True)
        log = collections.deque(maxlen=40)
        threading.Thread(target=_drain, args=(worker.stdout, log, rank), daemon=True,
                         name=f"allegro-rank-{rank}-log").start()
        self.workers.append(worker)
        self.logs.append(log)

    def _wait_until_ready(self):
        deadline = time.monotonic() + self.start_timeout_s
        pending = set(range(1, self.layout.world))
        while pending:
            self._raise_if_a_worker_exited()
            pending = {rank for rank in pending if not self.notes.check([f"ready/{rank}"])}
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"rank(s) {sorted(pending)} did not start within {self.start_timeout_s:g} s")
            time.sleep(0.05)

    def alive(self) -> bool:
        """Whether every worker is up and answering, checked before the group is used. Popen.poll() alone is
        not enough: a worker just killed looks alive until the kernel has torn it down (~0.1 s for a process
        holding a model), so each worker must also answer a ping on its command pipe, which a killed process
        never does. Waits at most `timeout_s` for the answers (a frozen worker counts as dead)."""
        if self.state != "running" or any(worker.poll() is not None for worker in self.workers):
            return False
        self.pings += 1
        keys = [f"pong/{self.pings}/{rank}" for rank in range(1, self.layout.world)]
        try:
            self._send({"op": "ping", "id": self.pings})
        except WorkerError:                               # a closed pipe: the group is shut down already
            return False
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.notes.wait(keys, timedelta(milliseconds=50))
                break
            except RuntimeError:                          # not all answered yet (the store's wait timed out)
                if any(worker.poll() is not None for worker in self.workers) or time.monotonic() > deadline:
                    return False
        for key in keys:
            self.notes.delete_key(key)
        return True

    def close(self, kill: bool = False):
        """Tell the workers to exit (kill them if `kill` or if they do not within 10 s), end the process group."""
        if self.state == "closed":
            return
        self.state = "closed"
        atexit.unregister(self.close)
        if not kill:
            try:
                self._send({"op": "exit"})
            except WorkerError:
                pass
        for worker in self.workers:
            try:
                worker.wait(timeout=0 if kill else 10)
            except subprocess.TimeoutExpired:
                pass
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stdin:
                try:
                    worker.stdin.close()
                except OSError:
                    pass
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as error:                       # a broken group may complain; it is gone either way
                LOG.debug("destroy_process_group: %s", error)
        self.store = self.notes = None

    # --- work ---------------------------------------------------------------------------------
    def load(self, config, weights: list, key, dtype: torch.dtype, transform=None):
        """Give every worker the DiT: `config` (a TransformerConfig), `weights` [(name, value)] as rank 0 stores
        them (tensors, QuantizedWeights, parallel_weights.Computed), computed in `dtype`. Skipped when `key`
        (not None) names the weights the workers already hold. transform(name, tensor) → tensor, if given,
        turns a stored plain tensor into the one rank 0 computes with (e.g. a low-VRAM LoRA patch)."""
        if key is not None and key == self.loaded_key:
            return
        self._require_running()
        self._send({"op": "load", "config": _config_dict(config), "dtype": str(dtype).removeprefix("torch."),
                    "tensors": parallel_weights.header(weights)})
        with self._watch("sending the model to the workers"):
            parallel_weights.send(weights, self.device, transform)
            dist.barrier()
        self.loaded_key = key

    def run_blocks(self, model, tokens, caption, modulation, caption_bias, rope, should_stop=None,
                   wrappers=NO_WRAPPERS, replicated=()):
        """AllegroTransformer3D.run_blocks across the group (the model must be `load`ed): tokens [B, N, dim] →
        [B, N, dim]. should_stop() → bool is polled before every block; when it says stop, every rank stops
        within a block and Cancelled is raised here. `wrappers`: rank 0's own block-stage wrappers (e.g.
        block swap), which must not change what the blocks compute. `replicated`: the rank_spec of each
        wrapper every rank runs a copy of (e.g. PAB); their copies' counts land in `last_counts`."""
        self._require_running()
        self.call_id += 1
        call = BlockCall(self.call_id, tokens.shape[0], tokens.shape[1], tuple(rope.grid), caption.shape[1],
                         caption_bias is not None, str(tokens.dtype).removeprefix("torch."), tuple(replicated))
        key = stop_key(call.call_id)
        published = []

        def stop_requested() -> bool:
            if should_stop is None or not should_stop():
                return False
            if not published:                      # the other groups read it from the store
                self.notes.set(key, "1")
                published.append(key)
            return True

        self.context.stop_requested = stop_requested
        stop_requested()                 # asked before the call: every rank stops before its first block
        self._send({"op": "blocks", "call": call.to_dict()})
        try:
            with self._watch("running the transformer blocks"):
                output, self.last_reports, self.last_counts = run_block_call(
                    model, self.context, call, tokens, caption, modulation, caption_bias, rope, wrappers)
        except Cancelled as cancelled:
            self.last_reports = cancelled.args[0] if cancelled.args else None
            self.last_counts = []
            raise
        finally:
            if published and self.notes is not None:
                self.notes.delete_key(key)
        return output

    # --- plumbing ------------------------------------------------------------------------------
    def _require_running(self):
        if self.state != "running":
            raise WorkerError("the Allegro rank group is shut down; start a new one")
        self._raise_if_a_worker_exited()

    def _send(self, command: dict):
        line = (json.dumps(command) + "\n").encode()
        for rank, worker in enumerate(self.workers, start=1):
            try:
                worker.stdin.write(line)
                worker.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as error:
                _reraise(self._failure(f"sending a command to rank {rank}", error), error)

    def _watch(self, what: str):
        return _Watch(self, what)

    def _raise_if_a_worker_exited(self):
        for rank, worker in enumerate(self.workers, start=1):
            if worker.poll() is not None:
                raise self._failure("checking the workers", None)

    def _failure(self, what: str, error) -> Exception:
        """Shut the group down and return the error to raise: WorkerError naming the failed rank when a worker
        is to blame (it died, left an error, or the group timed out), else rank 0's own error."""
        time.sleep(0.2)                                   # let a dying worker's last words reach the log
        blamed = []
        for rank, worker in enumerate(self.workers, start=1):
            note = self._note(f"error/{rank}")
            code = worker.poll()
            if note or code is not None:
                reason = note or f"its process exited with code {code}"
                last = " | ".join(line for line in list(self.logs[rank - 1])[-3:] if line.strip())
                blamed.append(f"rank {rank} ({self.devices[rank]}): {reason}" + (f" [last output: {last}]" if last else ""))
        timed_out = error is not None and "timed out" in str(error).lower() or isinstance(error, TimeoutError)
        self.close(kill=True)
        if blamed:
            return WorkerError(f"Allegro multi-GPU failed while {what}: " + "; ".join(blamed) +
                               ". The worker processes were shut down; the next run starts new ones.")
        if timed_out:
            return WorkerError(f"Allegro multi-GPU failed while {what}: the other ranks did not answer within "
                               f"{self.timeout_s:g} s ({error}). The worker processes were shut down; the next run "
                               "starts new ones.")
        return error if error is not None else WorkerError(f"Allegro multi-GPU failed while {what}.")

    def _note(self, key: str) -> str | None:
        try:
            return self.notes.get(key).decode() if self.notes is not None and self.notes.check([key]) else None
        except Exception:
            return None


class OnRankGroup(DiTWrapper):
    """The DiT's blocks stage on a rank group: the multi-GPU wrapper. `group`: a started RankGroup holding the
    model (`load`), or a subclass's `group_for(call)`. A wrapper that `runs_on_ranks` (e.g. PAB) runs as a copy on
    every rank (its rank_spec goes with the call, its copies' counts come back through ranks_ran); rank 0's other
    block- and attention-stage wrappers run on rank 0 only, so one of them that changes what the blocks compute
    is refused."""
    name = "Allegro Multi-GPU"
    order = INNER
    changes_output = False

    def __init__(self, group: RankGroup | None = None, should_stop=None):
        self.group, self.should_stop = group, should_stop

    def check_compatible(self, others):
        for other in others:
            if other.changes_output and not other.runs_on_ranks and (other.takes_part("block")
                                                                     or other.takes_part("attention")):
                raise ValueError(f"{other.name} cannot run on the 'Allegro Multi-GPU' rank group (its other GPUs "
                                 "would run the blocks without it): remove one of the two nodes.")

    def group_for(self, call: BlocksInput) -> RankGroup:
        return self.group

    def wrap_blocks(self, run, call: BlocksInput):
        replicated = [w for w in call.wrappers.items if w.runs_on_ranks]
        local = Wrappers([w for w in call.wrappers.items if not w.takes_part("blocks") and not w.runs_on_ranks])
        group = self.group_for(call)
        output = group.run_blocks(call.model, call.tokens, call.context, call.modulation, call.context_bias,
                                  call.rope, self.should_stop, local, [w.rank_spec(call) for w in replicated])
        for wrapper, counts in zip(replicated, group.last_counts):
            wrapper.ranks_ran(counts)
        return output


class _Watch:
    """Around a collective: a thread aborts the NCCL group when a worker dies (gloo fails by itself when a
    peer's socket closes); any failure becomes RankGroup._failure's error. Cancelled passes through."""

    def __init__(self, group: RankGroup, what: str):
        self.group, self.what = group, what
        self.done = threading.Event()

    def __enter__(self):
        if self.group.backend == "nccl":
            threading.Thread(target=self._watch, daemon=True, name="allegro-rank-watch").start()
        return self

    def _watch(self):
        while not self.done.wait(0.5):
            if any(worker.poll() is not None for worker in self.group.workers):
                abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
                if abort is not None:
                    abort()
                return

    def __exit__(self, kind, error, trace):
        self.done.set()
        if error is None or isinstance(error, (Cancelled, KeyboardInterrupt)):
            return False
        _reraise(self.group._failure(self.what, error), error)


def _reraise(failure: Exception, error: Exception):
    """Raise the group's verdict on `error`: the error itself when rank 0 is to blame, else a WorkerError."""
    if failure is error:
        raise error
    raise failure from error


def _drain(stream, log: collections.deque, rank: int):
    """Forward a worker's output to this process's log, keeping the last lines for error messages."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        log.append(line)
        LOG.info("[Allegro rank %d] %s", rank, line)
    stream.close()


def _config_dict(config) -> dict:
    from dataclasses import asdict
    return {name: (list(value) if isinstance(value, tuple) else value) for name, value in asdict(config).items()}
