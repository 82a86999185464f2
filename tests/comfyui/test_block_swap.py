"""Block swap: the library streams the right blocks at the right time (checked on CPU, where the
"device" copies are real copies of the host tensors), and the Allegro Block Swap node installs it
through ComfyUI's model management — after every load, for bf16 and GGUF models — without changing
the result, and reports its VRAM estimate.

Not exercised without a GPU: the side CUDA stream, pinned host memory, the copy/compute overlap and
the VRAM actually saved (the estimate's arithmetic is tested in test_memory_plan.py)."""
import pytest
import torch

from allegro.block_swap import BlockSwap, block_tensors, tensor_bytes
from allegro.config import TransformerConfig
from allegro.dit_wrappers import Wrappers
from allegro.transformer import AllegroTransformer3D


def small_model(layers=4):
    config = TransformerConfig(num_layers=layers, num_attention_heads=2, attention_head_dim=24, caption_channels=32,
                               cross_attention_dim=48, sample_frames=2, sample_height=8, sample_width=8)
    torch.manual_seed(0)
    model = AllegroTransformer3D(config).eval()
    for tensor in model.parameters():
        torch.nn.init.normal_(tensor, std=0.1)
    return model


def call(model, swap=None, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x, context = torch.randn(1, 4, 2, 8, 8, generator=generator), torch.randn(1, 6, 32, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), context, wrappers=Wrappers([swap] if swap is not None else []))


def pointers(block):
    return [t.data_ptr() for t in block_tensors(block)]


def test_streamed_blocks_run_on_fetched_copies_prefetched_one_ahead():
    model = small_model()
    expected = call(model)
    swap = BlockSwap(model, resident=1, device="cpu", prefetch=1)
    assert swap.streamed == [1, 2, 3]
    host = {i: pointers(model.transformer_blocks[i]) for i in swap.streamed}
    seen = []

    def record(index):
        def hook(module, args):
            # Runs inside the swap's wrapper: this block is on its fetched copy, the next one is in flight.
            on_copy = all(p not in host[index] for p in pointers(module))
            seen.append((index, on_copy, sorted(swap.ready)))
        return hook

    for index in swap.streamed:
        model.transformer_blocks[index].register_forward_pre_hook(record(index))
    assert torch.equal(call(model, swap), expected)
    assert seen == [(1, True, [1, 2]), (2, True, [2, 3]), (3, True, [1, 3])]     # block 3 prefetches the next call's 1
    for index in swap.streamed:                    # back on the host between uses, but for the one prefetched
        assert (pointers(model.transformer_blocks[index]) == host[index]) == (index not in swap.ready)
    block = tensor_bytes(model.transformer_blocks[1])
    assert swap.bytes_streamed == 4 * block                          # blocks 1, 2, 3, and 1 for the next call
    assert torch.equal(call(model, swap), expected)                  # block 1 came prefetched
    assert swap.bytes_streamed == 7 * block
    swap.remove()
    assert swap.ready == {} and all(pointers(model.transformer_blocks[i]) == host[i] for i in host)
    assert torch.equal(call(model, swap), expected)                  # removed: the blocks run where they are
    assert swap.fetches == [0, 3, 2, 2]                              # block 1 also prefetched at the end


@pytest.mark.parametrize("resident,prefetch,streamed", [(0, 2, [0, 1, 2, 3]), (4, 1, []), (9, 1, [])])
def test_resident_counts_and_deeper_prefetch(resident, prefetch, streamed):
    model = small_model()
    expected = call(model)
    swap = BlockSwap(model, resident=resident, device="cpu", prefetch=prefetch)
    assert swap.streamed == streamed
    assert torch.equal(call(model, swap), expected)
    assert len(swap.ready) == min(prefetch, len(streamed))
    swap.remove()


# --- the node, in ComfyUI -----------------------------------------------------------------------

def swap_node(comfy, model, resident=1, prefetch=1):
    return comfy.call("AllegroVideo_BlockSwap", model=model, resident_blocks=resident, prefetch=prefetch)


@pytest.mark.slow
def test_node_installs_the_swap_on_each_load_and_removes_it_on_unload(comfy, tiny_models):
    from comfy import model_management
    base = comfy.call("AllegroVideo_ModelLoader", model_name="diffusers/Allegro-tiny", weight_dtype="fp32")[0]
    swapped, text = swap_node(comfy, base)
    assert "1 of 2 blocks resident" in text and "GB" in text and "88x720x1280" in text
    controller = swapped.get_callbacks("on_load_after", "allegro_block_swap")[0].__self__
    assert controller.swap is None                                   # nothing until ComfyUI loads the model
    model_management.load_models_gpu([swapped])
    assert controller.swap is not None and controller.swap.streamed == [1]
    blocks = swapped.model.diffusion_model.transformer_blocks
    assert all(m.comfy_cast_weights for m in blocks[1].modules() if hasattr(m, "comfy_cast_weights"))
    assert swapped.model.model_lowvram
    model_management.unload_all_models()
    assert controller.swap is None
    # ComfyUI's unload restored the layers' own cast setting.
    assert not any(hasattr(m, "prev_comfy_cast_weights") for m in blocks[1].modules())
    # A second Block Swap node replaces the first one's callbacks instead of adding to them.
    again, _ = swap_node(comfy, swapped, resident=0)
    assert len(again.get_callbacks("on_load_after", "allegro_block_swap")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp32", "Q4_K"])
def test_sampling_with_block_swap_equals_sampling_without(comfy, tiny_models, quantized_models, fmt):
    """The width-768 model (fp32 and GGUF Q4_K): 3 steps through the graph with 0, 1 and 2 of its 2
    blocks resident give the very same latent as without the node."""
    from allegro_devtools.graphs import run_t2v, t2v_graph
    name = quantized_models["t2v"][fmt]
    expected, _ = run_t2v(comfy, t2v_graph(name))
    for resident in (0, 1, 2):
        latent, frames = run_t2v(comfy, t2v_graph(name, block_swap=resident))
        assert torch.equal(latent, expected), resident


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp32", "Q4_K"])
def test_the_streamed_blocks_really_run_on_copies_brought_in_for_each_call(comfy, quantized_models, fmt, monkeypatch):
    """Equal results cannot show on CPU that blocks were streamed: this records, at every block's run in the
    graph, whether its weights are the host's tensors or a copy fetched for that call, and counts the fetches."""
    import sys
    from allegro_devtools.graphs import run_t2v, t2v_graph
    node_module = next(module for name, module in sys.modules.items() if name.endswith(".adapters.block_swap"))
    swap_class, swaps, runs = node_module.BlockSwap, [], []
    original_init = swap_class.__init__

    def capturing_init(swap, *args, **kwargs):
        original_init(swap, *args, **kwargs)
        swaps.append(swap)
    monkeypatch.setattr(swap_class, "__init__", capturing_init)

    def recording(run, block):
        swap = swaps[-1]
        tensors = block_tensors(swap.blocks[block.index])
        host = swap.host_data.get(block.index, [])
        on_copy = bool(host) and not {t.data_ptr() for t in tensors} & {h.data_ptr() for h in host}
        runs.append((block.index, on_copy))
        return run(block)
    original_wrap = swap_class.wrap_block
    # Innermost of all: runs with the weights the block computes with.
    monkeypatch.setattr(swap_class, "wrap_block", lambda swap, run, block: original_wrap(
        swap, lambda inner: recording(run, inner), block))
    latent, _ = run_t2v(comfy, t2v_graph(quantized_models["t2v"][fmt], block_swap=1, steps=3))
    assert torch.isfinite(latent).all()
    swap = swaps[-1]
    assert swap.streamed == [1]
    calls = 3                                        # one batched cond + uncond call per step
    # Block 0 resident (runs on its own tensors), block 1 on a fresh copy every call, back on the host after.
    assert runs == [(0, False), (1, True)] * calls
    assert swap.fetches == [0, calls] and swap.bytes_streamed == calls * tensor_bytes(swap.blocks[1])
    host = swap.host_data[1]
    assert [t.data_ptr() for t in block_tensors(swap.blocks[1])] == [h.data_ptr() for h in host]
