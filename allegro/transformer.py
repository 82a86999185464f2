"""The Allegro DiT: a 3-D full-attention video transformer (T2V), and its TI2V variant.

Released model: 32 blocks of width 2304 (24 heads x 96), adaLN-single timestep modulation,
3-D RoPE, patch 1x2x2 over a 4-channel latent, T5-XXL captions (4096-d) projected to the width.
Tensor names equal diffusers' `AllegroTransformer3DModel` (and the original repo's), so the hub
checkpoints load as they are. TI2V adds two patch-embed branches (masked-video latent, 4-channel
frame mask) whose outputs are added to the video tokens, and a first-frame branch that shifts the
final layer's timestep embedding; its input is 12 channels: [noisy latent, masked video, mask].

Every Linear/Conv/LayerNorm is built through `operations` (torch.nn by default) so a host such
as ComfyUI can pass its own layer classes (weight casting, low-VRAM offload, fp8 storage).

What a host may change: `attention` (the callable the attention layers end in; a host may swap it),
and, per call, the `Wrappers` passed to `forward` (allegro/dit_wrappers.py): the one seam every feature
(step cache, block swap, multi-GPU, a host's block patches) stacks onto, around the blocks, each block
and each attention. The wrappers' host options reach the attention callable untouched.
"""
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .dit_wrappers import NO_WRAPPERS, BlockInput, BlocksInput
from .rope import RotaryEmbedding3D


def timestep_frequencies(timestep: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [B] → [B, dim], cos half first."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TwoLayerMLP(nn.Module):
    """linear_1 → activation → linear_2 (timestep embedder: SiLU; caption projection: tanh-GELU)."""

    def __init__(self, in_dim, dim, activation, ops, **factory):
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, dim, bias=True, **factory)
        self.linear_2 = ops.Linear(dim, dim, bias=True, **factory)
        self.activation = activation

    def forward(self, x):
        return self.linear_2(self.activation(self.linear_1(x)))


class TimestepEmbedding(nn.Module):
    def __init__(self, dim, ops, **factory):
        super().__init__()
        self.timestep_embedder = TwoLayerMLP(256, dim, nn.SiLU(), ops, **factory)

    def forward(self, frequencies):
        return self.timestep_embedder(frequencies)


class TimestepConditioning(nn.Module):
    """adaLN-single: one timestep embedding shared by all blocks (`adaln_single.*` tensors)."""

    def __init__(self, dim, ops, **factory):
        super().__init__()
        self.emb = TimestepEmbedding(dim, ops, **factory)
        self.linear = ops.Linear(dim, 6 * dim, bias=True, **factory)

    def forward(self, timestep, dtype):
        """timestep [B] → (block modulation [B, 6*dim], embedded timestep [B, dim])."""
        embedded = self.emb(timestep_frequencies(timestep).to(dtype))
        return self.linear(F.silu(embedded)), embedded


class PatchEmbed(nn.Module):
    """Per-frame 2-D patchify: [B, C, T, H, W] → tokens [B, T*(H/p)*(W/p), dim], (t, h, w) order."""

    def __init__(self, in_channels, dim, patch, ops, **factory):
        super().__init__()
        self.proj = ops.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True, **factory)

    def forward(self, x):
        batch = x.shape[0]
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1)                   # [B*T, C, H, W]
        tokens = self.proj(frames).flatten(2).transpose(1, 2)              # [B*T, h*w, dim]
        return tokens.unflatten(0, (batch, -1)).flatten(1, 2)              # [B, T*h*w, dim]


class Attention(nn.Module):
    """Multi-head attention with diffusers' tensor names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim, heads, head_dim, context_dim, bias, ops, **factory):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = ops.Linear(dim, inner, bias=bias, **factory)
        self.to_k = ops.Linear(context_dim, inner, bias=bias, **factory)
        self.to_v = ops.Linear(context_dim, inner, bias=bias, **factory)
        self.to_out = nn.ModuleList([ops.Linear(inner, dim, bias=True, **factory)])

    def forward(self, x, context, attention, mask=None, rope=None):
        """x [B, N, dim], context [B, L, context_dim], mask additive [B, 1, 1, L] → [B, N, dim];
        attention(q, k, v, mask) on [B, heads, N, d]."""
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))   # [B, heads, *, d]
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        out = attention(q, k, v, mask)
        return self.to_out[0](out.transpose(1, 2).flatten(2).to(q.dtype))


def sdpa_attention(q, k, v, mask=None, options=None):
    """The default attention: PyTorch SDPA on [B, heads, N, d] with an additive mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class GeluProjection(nn.Module):
    def __init__(self, dim, hidden, ops, **factory):
        super().__init__()
        self.proj = ops.Linear(dim, hidden, bias=True, **factory)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """dim → 4·dim (tanh-GELU) → dim; `net.0.proj` / `net.2` as diffusers names them (net.1 was dropout)."""

    def __init__(self, dim, ops, **factory):
        super().__init__()
        self.net = nn.ModuleList([GeluProjection(dim, 4 * dim, ops, **factory), nn.Identity(),
                                  ops.Linear(4 * dim, dim, bias=True, **factory)])
        # Tokens per chunk (None: all at once). Each token is independent here, so chunking only
        # bounds the 4x-wide activation: 2 x 79,200 tokens x 9,216 in bf16 is 2.9 GB unchunked.
        self.chunk_tokens = None

    def forward(self, x):
        if self.chunk_tokens is None or x.shape[1] <= self.chunk_tokens:
            return self.net[2](self.net[0](x))
        return torch.cat([self.net[2](self.net[0](part)) for part in x.split(self.chunk_tokens, dim=1)], dim=1)


class TransformerBlock(nn.Module):
    """Self-attention (RoPE, modulated) → cross-attention on captions (unmodulated, no norm) →
    feed-forward (modulated), each with a residual; the reference block's exact order."""

    def __init__(self, config: TransformerConfig, ops, **factory):
        super().__init__()
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.norm1 = ops.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False, **factory)
        self.attn1 = Attention(dim, heads, head_dim, dim, config.attention_bias, ops, **factory)
        self.attn2 = Attention(dim, heads, head_dim, config.cross_attention_dim, config.attention_bias, ops, **factory)
        self.norm2 = ops.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False, **factory)
        self.ff = FeedForward(dim, ops, **factory)
        self.scale_shift_table = nn.Parameter(torch.empty(6, dim, **factory))

    def modulations(self, x, modulation):
        """shift/scale/gate for attention and MLP, each [B, 1, dim]."""
        table = self.scale_shift_table.to(device=x.device, dtype=x.dtype)
        return (table[None] + modulation.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)

    def modulated_input(self, x, modulation):
        shift_msa, scale_msa = self.modulations(x, modulation)[:2]
        return self.norm1(x) * (1 + scale_msa) + shift_msa

    def forward(self, x, context, modulation, context_bias, rope, self_attention, cross_attention):
        """x [B, N, dim]; modulation [B, 6*dim]; context [B, L, dim]; context_bias [B, 1, 1, L];
        self_attention / cross_attention: the callables (q, k, v, mask) each attention ends in."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulations(x, modulation)
        normed = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = gate_msa * self.attn1(normed, normed, self_attention, rope=rope) + x
        x = self.attn2(x, context, cross_attention, mask=context_bias) + x
        normed = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return gate_mlp * self.ff(normed) + x


class ConditionBranch(nn.ModuleList):
    """TI2V side input: [patch embed, bias-free linear (zero-initialised in training)].
    A ModuleList so its tensors are named `<branch>.0.proj.*` and `<branch>.1.weight` as in the
    original checkpoint."""

    def __init__(self, in_channels, dim, patch, ops, **factory):
        super().__init__([PatchEmbed(in_channels, dim, patch, ops, **factory),
                          ops.Linear(dim, dim, bias=False, **factory)])

    def forward(self, x):
        return self[1](self[0](x))


class AllegroTransformer3D(nn.Module):
    def __init__(self, config: TransformerConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        config.validate()
        self.config = config
        ops, factory = operations, {"device": device, "dtype": dtype}
        dim, patch = config.inner_dim, config.patch_size
        self.pos_embed = PatchEmbed(config.in_channels, dim, patch, ops, **factory)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(config, ops, **factory) for _ in range(config.num_layers)])
        self.norm_out = ops.LayerNorm(dim, eps=1e-6, elementwise_affine=False, **factory)
        self.scale_shift_table = nn.Parameter(torch.empty(2, dim, **factory))
        self.proj_out = ops.Linear(dim, patch * patch * config.out_channels, bias=True, **factory)
        self.adaln_single = TimestepConditioning(dim, ops, **factory)
        self.caption_projection = TwoLayerMLP(config.caption_channels, dim, nn.GELU(approximate="tanh"), ops, **factory)
        if config.ti2v:
            self.pos_embed_masked_video = ConditionBranch(config.in_channels, dim, patch, ops, **factory)
            self.pos_embed_mask = ConditionBranch(config.in_channels, dim, patch, ops, **factory)
            self.pos_embed_first_frame = ConditionBranch(config.in_channels, dim, patch, ops, **factory)
        self.attention = sdpa_attention      # (q, k, v, additive mask) → out; a host may swap it
        self._rope_cache = {}

    def set_feed_forward_chunking(self, tokens: int | None):
        for block in self.transformer_blocks:
            block.ff.chunk_tokens = tokens

    def rope(self, grid, device) -> RotaryEmbedding3D:
        key = (grid, str(device))
        cached = self._rope_cache.get(key)
        # Tables built during a sampling run (ComfyUI runs nodes under torch.inference_mode) cannot be
        # saved for backward: a later training run (inference mode off) builds its own.
        if cached is None or (cached.cos[0].is_inference() and not torch.is_inference_mode_enabled()):
            c = self.config
            scales = (c.interpolation_scale_t, c.interpolation_scale_h, c.interpolation_scale_w)
            self._rope_cache = {key: RotaryEmbedding3D(c.attention_head_dim, grid, scales, device,
                                                       share_equal_lengths=c.rope_shares_equal_lengths)}
        return self._rope_cache[key]

    def embed(self, x, timestep, context, context_mask):
        """Tokens, block modulation, final-layer embedding, projected captions and their mask bias."""
        c = self.config
        noisy = x[:, :c.in_channels]
        tokens = self.pos_embed(noisy)                                       # [B, N, dim]
        modulation, embedded_timestep = self.adaln_single(timestep, tokens.dtype)
        if c.ti2v:
            masked_video, mask = x[:, c.in_channels:2 * c.in_channels], x[:, 2 * c.in_channels:]
            tokens = tokens + self.pos_embed_masked_video(masked_video) + self.pos_embed_mask(mask)
            # The first latent frame of the noisy input, pooled over its tokens, shifts the
            # final layer's modulation (the original model's first-frame branch).
            first_frame = self.pos_embed_first_frame(noisy[:, :, :1])         # [B, h*w, dim]
            embedded_timestep = embedded_timestep + first_frame.mean(dim=1)
        context = self.caption_projection(context)                           # [B, L, dim]
        context_bias = None
        if context_mask is not None:
            # 0 for real tokens, -10000 for padding (the reference's additive bias).
            context_bias = ((1 - context_mask.to(tokens.dtype)) * -10000.0)[:, None, None, :]
        return tokens, modulation, embedded_timestep, context, context_bias

    def run_blocks(self, tokens, context, modulation, context_bias, rope, wrappers=NO_WRAPPERS):
        """Every transformer block in turn, each through the block stage of `wrappers` (a Wrappers), its
        attentions through their attention stage; the attention callable gets the wrappers' host options."""
        options = wrappers.options
        base = self.attention if options is None else functools.partial(_with_options, self.attention, options)
        self_attention, cross_attention = wrappers.attention(base, cross=False), wrappers.attention(base, cross=True)

        def run(block: BlockInput):
            return self.transformer_blocks[block.index](block.tokens, block.context, block.modulation, context_bias,
                                                        block.rope, self_attention, cross_attention)
        run_block = wrappers.block_runner(run)
        for index in range(len(self.transformer_blocks)):
            tokens = run_block(BlockInput(index, tokens, context, modulation, rope))
        return tokens

    def unpatchify(self, tokens, embedded_timestep, grid):
        c, (frames, rows, cols), p = self.config, grid, self.config.patch_size
        table = self.scale_shift_table.to(device=tokens.device, dtype=tokens.dtype)
        shift, scale = (table[None] + embedded_timestep[:, None]).chunk(2, dim=1)   # each [B, 1, dim]
        out = self.proj_out(self.norm_out(tokens) * (1 + scale) + shift)           # [B, N, p*p*C]
        out = out.reshape(out.shape[0], frames, rows, cols, p, p, c.out_channels)
        out = out.permute(0, 6, 1, 2, 4, 3, 5)                                     # [B, C, T, h, p, w, p]
        return out.reshape(out.shape[0], c.out_channels, frames, rows * p, cols * p)

    def forward(self, x, timestep, context, context_mask=None, wrappers=NO_WRAPPERS):
        """
        x:            [B, C, T, H, W] scaled model input; C = 4 (T2V) or 12 (TI2V: noisy,
                      masked-video latent, folded frame mask)
        timestep:     [B] diffusion timestep in [0, 1000), may be fractional
        context:      [B, L, caption_channels] T5 hidden states
        context_mask: [B, L] 1 for real tokens, 0 for padding (None: all real)
        wrappers:     the call's features (allegro.dit_wrappers.Wrappers), around the blocks, each block
                      and each attention
        returns:      [B, out_channels, T, H, W] predicted noise
        """
        batch, channels, frames, height, width = x.shape
        p = self.config.patch_size
        if channels != self.config.input_channels:
            kind = "TI2V" if self.config.ti2v else "T2V"
            raise ValueError(f"this Allegro {kind} model takes {self.config.input_channels} input channels, got {channels}")
        if height % p or width % p:
            raise ValueError(f"latent height and width must be multiples of {p}, got {height}x{width}")
        grid = (frames, height // p, width // p)
        tokens, modulation, embedded_timestep, context, context_bias = self.embed(x, timestep, context, context_mask)
        call = BlocksInput(self, tokens, context, modulation, context_bias, self.rope(grid, x.device), wrappers)
        tokens = wrappers.run_blocks(_run_blocks_here, call)
        return self.unpatchify(tokens, embedded_timestep, grid)


def _run_blocks_here(call: BlocksInput):
    return call.model.run_blocks(call.tokens, call.context, call.modulation, call.context_bias, call.rope,
                                 call.wrappers)


def _with_options(attention, options, q, k, v, mask=None):
    """A host's attention callable with its options (the fifth argument; plain callables never see them)."""
    return attention(q, k, v, mask, options)
