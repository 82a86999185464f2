"""The composition matrix (allegro_devtools/feature_matrix.py) through ComfyUI's executor, on the width-768
random-weight T2V and TI2V transformers in fp32, scaled fp8, GGUF Q8_0 and Q4_K: each feature alone on each
weights format, and the triples people build, in text-to-video and image-to-video. A cell equals the result
of the same combination without its result-preserving features (Multi-GPU, Block Swap: ≤ 1e-5 relative;
TorchCompileModel: ≤ 1e-4), changes it where a feature should (LoRA, caches: by more than 1e-3 of its norm,
and the caches really skipped DiT passes), or is refused with the message the table names (before sampling, or where the table says so, during step 1).
Besides the result: Block Swap really ran its streamed block on a fetched copy, Multi-GPU really ran both
ranks (with PAB: both ranks' copies skipped), TorchCompileModel really traced the DiT.

Measured (fp32 compute, this machine's AVX-512 kernels, 1 thread): Multi-GPU, Block Swap and the triples 0
(bit-identical) in every format and mode; TorchCompileModel 1.9e-6 to 3.0e-6 (max relative, all 8 cells). Changes (norm): both LoRA
loaders 5.7e-2 to 8.9e-2 (equal to each other), EasyCache 7.2e-3 to 8.5e-3, LazyCache 1.1e-2 to 2.7e-1, the
step cache 1.4e-4 (T2V: one of 3 steps skipped late) to 3.3e-3 (TI2V); Allegro PAB (every attention reused at
step 2 of 3) 1.4e-4 (T2V) and 3.2e-3 to 3.3e-3 (TI2V) in every format; LoRA + Block Swap + PAB equal to LoRA + PAB: 0;
PAB + Multi-GPU (sequence 2, CFG 2; fp32, Q8_0) equal to PAB alone: 0, each rank reusing 4 of its 12 attentions.
The same figures under ComfyUI 0.3.75, 0.33.0 and 0.8.0 (docs/numerics-spread.md, every cell of test_cell): bound
EQUAL_BOUND 1e-5 where 0 is measured, COMPILED_BOUND 1e-4 (34x the largest compiled cell: inductor's own kernels),
CHANGE_BOUND 1e-5 below the smallest change, 1.4e-4."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from allegro_devtools.feature_matrix import ALL_COMPILES_ENV, Cell, cells
from numerics import assert_relative, norm_relative, record

pytestmark = pytest.mark.slow

STEPS = 3
EQUAL_BOUND = 1e-5                  # multi-GPU and block swap, the multi-GPU tests' bound
COMPILED_BOUND = 1e-4               # inductor's reordered sums, as tests/comfyui/test_core_patches.py
# A LoRA or a cache moves the result by more than the paths that must not change it may differ by, so no
# result passes as both; the caches' skipped passes are counted besides (a skipped step of 3 reuses the last
# step's residual: the smallest change measured, 1.4e-4).
CHANGE_BOUND = EQUAL_BOUND
LORA = "feature_matrix_lora.safetensors"
IMAGE = "feature_matrix_first.png"

NODES = {
    "allegro_lora": ("AllegroVideo_LoraLoader", {"lora_name": LORA, "strength_model": 1.0}),
    "core_lora": ("LoraLoaderModelOnly", {"lora_name": LORA, "strength_model": 1.0}),
    "block_swap": ("AllegroVideo_BlockSwap", {"resident_blocks": 1, "prefetch": 1}),
    "step_cache": ("AllegroVideo_StepCache", {"threshold": 2.0, "start": 0.0, "end": 1.0}),
    "easycache": ("EasyCache", {"reuse_threshold": 3.0, "start_percent": 0.0, "end_percent": 1.0, "verbose": False}),
    "lazycache": ("LazyCache", {"reuse_threshold": 3.0, "start_percent": 0.0, "end_percent": 1.0, "verbose": False}),
    "compile": ("TorchCompileModel", {"backend": "inductor"}),
    "multigpu_seq2": ("AllegroVideo_MultiGPU", {"gpus": 2, "cfg_parallel": False, "devices": ""}),
    "multigpu_cfg2": ("AllegroVideo_MultiGPU", {"gpus": 2, "cfg_parallel": True, "devices": ""}),
    "slg": ("SkipLayerGuidanceDiT", {"double_layers": "1", "single_layers": "", "scale": 3.0, "start_percent": 0.0,
                                     "end_percent": 1.0, "rescaling_scale": 0.0}),
    # Every attention reused on every other call at any timestep: of 3 steps, the second reuses.
    "pab": ("AllegroVideo_PAB", {"spatial_skip_range": 2, "spatial_timestep_start": 0, "spatial_timestep_end": 1000,
                                 "cross_skip_range": 2, "cross_timestep_start": 0, "cross_timestep_end": 1000}),
}
CACHES = {"step_cache", "easycache", "lazycache"}


def package_module(suffix: str, attribute: str):
    """A module of the package as ComfyUI loaded it (the custom node is a package of its own)."""
    return next(module for name, module in sys.modules.items() if name.endswith(suffix) and hasattr(module, attribute))


def graph(cell: Cell, model_names: dict) -> dict:
    """Tiny T5 + the cell's transformer → its feature nodes, chained → Allegro Sampler; TI2V conditions on a
    first frame through the tiny TI2V VAE."""
    kind = cell.mode.lower()
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": "diffusers/Allegro-tiny", "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader",
                "inputs": {"model_name": model_names[kind][cell.weights], "weight_dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a paper boat on a pond", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": False}},
    }
    positive, negative = ["text", 0], ["text", 1]
    if cell.mode == "TI2V":
        nodes["vae"] = {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": "diffusers/Allegro-TI2V-tiny",
                                                                           "dtype": "fp32"}}
        nodes["image"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        nodes["ti2v"] = {"class_type": "AllegroVideo_TI2VConditioning", "inputs": {
            "positive": positive, "negative": negative, "vae": ["vae", 0], "first_frame": ["image", 0],
            "width": 64, "height": 64, "length": 8}}
        positive, negative, latent = ["ti2v", 0], ["ti2v", 1], ["ti2v", 2]
    else:
        nodes["latent"] = {"class_type": "AllegroVideo_EmptyLatentVideo",
                           "inputs": {"width": 64, "height": 64, "length": 8, "batch_size": 1}}
        latent = ["latent", 0]
    model = ["dit", 0]
    for feature in cell.features:
        class_type, inputs = NODES[feature]
        nodes[feature] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [feature, 0]
    nodes["sample"] = {"class_type": "AllegroVideo_Sampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent": latent,
        "seed": 5, "steps": STEPS, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
        "noise_stream": "comfy", "denoise": 1.0}}
    return nodes


class Matrix:
    """Runs cells, remembers their latents (a cell's comparison runs once), and watches what the features did:
    DiT block passes, Block Swap fetches."""

    def __init__(self, comfy, model_names, monkeypatch):
        self.comfy, self.model_names, self.latents = comfy, model_names, {}
        self.block_passes, self.swaps = 0, []
        self.pab_ranks = {}             # rank → [computed, skipped] attentions of PAB's copies on a rank group
        dit_class = package_module(".allegro.transformer", "AllegroTransformer3D").AllegroTransformer3D
        run_blocks = dit_class.run_blocks

        def counting(model, *args, **kwargs):
            self.block_passes += 1
            return run_blocks(model, *args, **kwargs)
        monkeypatch.setattr(dit_class, "run_blocks", counting)
        swap_class = package_module(".adapters.block_swap", "BlockSwap").BlockSwap
        swap_init = swap_class.__init__

        def capturing(swap, *args, **kwargs):
            swap_init(swap, *args, **kwargs)
            self.swaps.append(swap)
        monkeypatch.setattr(swap_class, "__init__", capturing)
        pab_class = package_module(".adapters.caches", "SamplerPAB").SamplerPAB
        ranks_ran = pab_class.ranks_ran

        def adding(pab, counts):
            for rank, (computed, skipped) in enumerate(counts):
                total = self.pab_ranks.setdefault(rank, [0, 0])
                total[0], total[1] = total[0] + computed, total[1] + skipped
            return ranks_ran(pab, counts)
        monkeypatch.setattr(pab_class, "ranks_ran", adding)

    def run(self, cell: Cell):
        self.block_passes, self.pab_ranks = 0, {}
        return self.comfy.run(graph(cell, self.model_names), targets=["sample"], fresh=False)

    def latent(self, cell: Cell) -> torch.Tensor:
        if cell not in self.latents:
            result = self.run(cell)
            assert result.status == "success", f"{cell.id}: {result.error}"
            self.latents[cell] = result.output("sample")["samples"]
        return self.latents[cell]


@pytest.fixture(scope="module")
def matrix(comfy, base_dir, quantized_models):
    write_lora(base_dir)
    pixels = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(pixels).save(base_dir / "input" / IMAGE)
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield Matrix(comfy, quantized_models, monkeypatch)
    package_module(".adapters.parallel", "ParallelRoute").shutdown()


def write_lora(base_dir) -> None:
    """A LoRA (ComfyUI's key format, which both loaders read) over three of the width-768 model's layers."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(17)
    tensors = {}
    for layer, (rows, cols) in {"transformer_blocks.0.attn1.to_q": (768, 768), "transformer_blocks.1.ff.net.2": (768, 3072),
                                "transformer_blocks.1.attn2.to_v": (768, 768)}.items():
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(rows, 4, generator=generator) * 0.05
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, cols, generator=generator) * 0.05
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(4.0)
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(tensors, base_dir / "models" / "loras" / LORA)


@pytest.mark.parametrize("cell", cells(), ids=lambda cell: cell.id)
def test_cell(matrix, cell):
    expect = cell.expect
    if expect.startswith("refused"):
        # Refused before sampling: no DiT block ran; during step 1: the step's first DiT pass ran.
        when, message = expect.split(": ", 1)
        result = matrix.run(cell)
        assert result.status == "error", f"{cell.id} was not refused"
        assert message in str(result.error["exception_message"])
        assert matrix.block_passes == (1 if when == "refused during step 1" else 0), matrix.block_passes
        return
    if cell.opt_in and os.environ.get(ALL_COMPILES_ENV) != "1":
        pytest.skip(f"a long compile: set {ALL_COMPILES_ENV}=1 to run it")
    if "compile" in cell.features:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    latent = matrix.latent(cell)
    passes, pab_ranks = matrix.block_passes, matrix.pab_ranks
    assert torch.isfinite(latent).all()
    if expect == "baseline":
        assert passes == STEPS
        return
    expected = matrix.latent(cell.compared_with)
    if expect == "equal":
        bound = COMPILED_BOUND if "compile" in cell.features else EQUAL_BOUND
        assert_relative(latent, expected, bound, f"{cell.id} vs {cell.compared_with.id}")
    else:
        change = norm_relative(latent, expected)
        record(change, f"{cell.id} vs {cell.compared_with.id} (change)")
        assert change > CHANGE_BOUND, f"{cell.id} moved the result by only {change:.2e} of its norm"
    if CACHES & set(cell.features):
        assert 0 < passes < STEPS, f"the cache skipped no DiT pass ({passes} of {STEPS})"
    if "block_swap" in cell.features:
        swap = matrix.swaps[-1]
        assert swap.streamed == [1] and swap.fetches[1] >= passes > 0 and swap.bytes_streamed > 0
    if "compile" in cell.features:
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "torch.compile never traced the DiT"
        torch._dynamo.reset()
    if {"multigpu_seq2", "multigpu_cfg2"} & set(cell.features):
        group = package_module(".adapters.parallel", "ParallelRoute")._group
        assert group.alive() and group.layout.world == 2
        assert group.layout.cfg == (2 if "multigpu_cfg2" in cell.features else 1)
        assert group.last_reports == [(0, 2), (0, 2)]          # both ranks ran both blocks of the last call
        if "pab" in cell.features:
            # Every rank ran its own PAB: of 3 calls x 2 blocks x 2 attentions, each reused the 4 of call 2.
            assert pab_ranks == {0: [8, 4], 1: [8, 4]}, pab_ranks
