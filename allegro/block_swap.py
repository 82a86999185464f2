"""Block swap: run the DiT with only some of its blocks resident on the GPU.

The first `resident` blocks stay on the device; every other block keeps its tensors on the host
(pinned, when the device is a GPU) and is copied in on a side stream `prefetch` blocks ahead of
use (the copy of block i+1 overlaps the compute of block i), then dropped after it runs. The
device then holds the resident blocks plus at most 1 + prefetch streamed ones.

Tensors are swapped through `.data`, so parameter objects (and anything holding them, such as
ComfyUI's model patcher) stay the same; any layer type works, quantised ones included (their
stored bytes are what moves). It acts as a wrapper of the DiT's block stage (allegro/dit_wrappers.py):
a model call streams only with it in the call's Wrappers. Inside ComfyUI the Allegro Block Swap node
(adapters/block_swap.py) sets this up after ComfyUI's model management has loaded the model, on the
blocks ComfyUI put on the GPU as well as the ones it left offloaded.
"""
import torch

from .dit_wrappers import INNER, BlockInput, DiTWrapper


def block_tensors(block: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in list(block.parameters()) + list(block.buffers())]


def tensor_bytes(block: torch.nn.Module) -> int:
    return sum(t.nbytes for t in block_tensors(block))


class BlockSwap(DiTWrapper):
    name = "Allegro Block Swap"
    order = INNER                     # innermost: whatever else wraps a block runs on its fetched weights
    changes_output = False

    def __init__(self, model, resident: int, device, host="cpu", prefetch: int = 1, pin: bool = True,
                 move_resident: bool = True):
        """model: has `.transformer_blocks`. move_resident: also move the resident blocks to `device`
        (False leaves them where they are, e.g. where ComfyUI's partial loading put them)."""
        self.blocks = list(model.transformer_blocks)
        self.resident = max(0, min(resident, len(self.blocks)))
        self.prefetch = max(0, prefetch)
        self.device, self.host = torch.device(device), torch.device(host)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.host_data = {}      # streamed block index → [host tensor of each of block_tensors(block)]
        self.ready = {}          # streamed block index → CUDA event of its copy (None off CUDA)
        self.bytes_streamed = 0
        self.fetches = [0] * len(self.blocks)       # copies to the device, per block
        self.active = True                          # False once removed: blocks run where they are
        for index, block in enumerate(self.blocks):
            tensors = block_tensors(block)
            if index < self.resident:
                if move_resident:
                    for tensor in tensors:
                        tensor.data = tensor.data.to(self.device)
                continue
            host_data = []
            for tensor in tensors:
                data = tensor.data.to(self.host)
                if pin and self.copy_stream is not None and not data.is_pinned():
                    data = data.pin_memory()
                tensor.data = data
                host_data.append(data)
            self.host_data[index] = host_data

    def wrap_block(self, run, block: BlockInput):
        if not self.active or block.index not in self.host_data:
            return run(block)
        self._before(block.index)
        try:
            return run(block)
        finally:
            self._after(block.index)

    @property
    def streamed(self) -> list[int]:
        return list(self.host_data)

    def _fetch(self, index):
        if index not in self.host_data or index in self.ready:
            return
        stream = self.copy_stream
        with torch.cuda.stream(stream) if stream is not None else torch.no_grad():
            for tensor, data in zip(block_tensors(self.blocks[index]), self.host_data[index]):
                tensor.data = data.to(self.device, non_blocking=stream is not None, copy=True)
                self.bytes_streamed += data.nbytes
            self.fetches[index] += 1
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
                self.ready[index] = event
            else:
                self.ready[index] = None

    def _before(self, index):
        self._fetch(index)
        event = self.ready.get(index)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        # Overlap the next streamed blocks' copies with this block's compute (wrapping to the first
        # streamed blocks for the next model call).
        upcoming = [i for i in self.host_data if i > index][:self.prefetch]
        if len(upcoming) < self.prefetch:
            upcoming += [i for i in self.host_data if i < index][:self.prefetch - len(upcoming)]
        for following in upcoming:
            self._fetch(following)

    def _after(self, index):
        tensors = block_tensors(self.blocks[index])
        if self.copy_stream is not None:
            # The copies were allocated on the side stream; keep them alive until this stream is done.
            for tensor in tensors:
                tensor.data.record_stream(torch.cuda.current_stream(self.device))
        for tensor, data in zip(tensors, self.host_data[index]):
            tensor.data = data
        self.ready.pop(index, None)

    def remove(self):
        """Stop streaming: drop the prefetched copies (streamed blocks stay on the host)."""
        self.active = False
        for index in list(self.ready):
            for tensor, data in zip(block_tensors(self.blocks[index]), self.host_data[index]):
                tensor.data = data
        self.ready = {}
