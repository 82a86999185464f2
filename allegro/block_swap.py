"""Block swap: run the DiT with only some of its blocks resident on the GPU.

The first `resident` blocks stay on the GPU; every other block keeps its weights in pinned CPU
memory and is copied in on a side stream one block ahead of use (so the copy of block i+1
overlaps the compute of block i), then dropped after it runs. VRAM then holds the resident
blocks plus two streamed ones. (Inside ComfyUI, its own partial loading does the same job for
the model nodes: this is for library users and the GPU benchmark.)
"""
import torch


class BlockSwap:
    def __init__(self, model, resident: int, device: torch.device):
        self.blocks = list(model.transformer_blocks)
        self.resident = max(0, min(resident, len(self.blocks)))
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.host = {}          # streamed block index → {param name: pinned CPU tensor}
        self.ready = {}         # streamed block index → CUDA event marking its copy as done
        for index, block in enumerate(self.blocks):
            if index < self.resident:
                block.to(self.device)
                continue
            block.to("cpu")
            self.host[index] = {}
            for name, tensor in list(block.named_parameters()) + list(block.named_buffers()):
                pinned = tensor.data.pin_memory() if self.copy_stream is not None else tensor.data
                tensor.data = pinned
                self.host[index][name] = pinned
        self.hooks = []
        for index in self.host:
            block = self.blocks[index]
            self.hooks.append(block.register_forward_pre_hook(lambda module, args, i=index: self._before(i)))
            self.hooks.append(block.register_forward_hook(lambda module, args, output, i=index: self._after(i)))

    def _tensors(self, index):
        block = self.blocks[index]
        return list(block.named_parameters()) + list(block.named_buffers())

    def _fetch(self, index):
        if index not in self.host or index in self.ready:
            return
        stream = self.copy_stream
        with torch.cuda.stream(stream) if stream is not None else torch.no_grad():
            for name, tensor in self._tensors(index):
                tensor.data = self.host[index][name].to(self.device, non_blocking=True)
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
        self._fetch(index + 1)                        # overlap the next copy with this compute

    def _after(self, index):
        if self.copy_stream is not None:
            # The copies were made on the side stream; keep them alive until this stream is done.
            for _, tensor in self._tensors(index):
                tensor.data.record_stream(torch.cuda.current_stream(self.device))
        for name, tensor in self._tensors(index):
            tensor.data = self.host[index][name]
        self.ready.pop(index, None)

    def remove(self):
        for hook in self.hooks:
            hook.remove()
