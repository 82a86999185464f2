"""The Allegro 3-D VAE (175M parameters): 8x spatial and 4x temporal compression, 4 latent channels;
its config, latent scale included, is `config.VAEConfig`. Tensor names equal diffusers'
AutoencoderKLAllegro (and the original repo's), so the hub's vae/ weights load as they are.

This module runs the network on one input (a tile); `vae_tiling` splits a video into the
reference's tiles and blends them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from . import vae_cpu
from .vae_blocks import MidBlock, ResampleBlock, frames_to_video, temporal_pointwise_conv, video_to_frames


def temporal_residual(conv, x: torch.Tensor, reference_ops: bool) -> torch.Tensor:
    """x + conv(x) for the zero-padded (3,1,1) temp_conv_in / temp_conv_out layers."""
    if reference_ops:
        return conv(x).add_(x)
    return temporal_pointwise_conv(x, conv.weight, conv.bias, zero_padded=True).add_(x)


def per_frame(layer, video: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D layer to every frame of [B, C, T, H, W]."""
    return frames_to_video(layer(video_to_frames(video)), video.shape[0])


class Encoder(nn.Module):
    # The encoder keeps the reference's op order: its TI2V input is a black video, where rounding
    # differences are amplified (see TemporalConvStack), and it runs once per video.
    reference_ops = True

    def __init__(self, config: VAEConfig, ops, **factory):
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = ops.Conv2d(config.in_channels, channels[0], 3, padding=1, **factory)
        self.temp_conv_in = ops.Conv3d(channels[0], channels[0], (3, 1, 1), padding=(1, 0, 0), **factory)
        self.down_blocks = nn.ModuleList([
            ResampleBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, ops,
                          spatial=i < len(channels) - 1, temporal=config.temporal_downsample_blocks[i],
                          direction="down", reference_ops=self.reference_ops, **factory)
            for i in range(len(channels))])
        self.mid_block = MidBlock(channels[-1], groups, ops, reference_ops=self.reference_ops, **factory)
        self.conv_norm_out = ops.GroupNorm(groups, channels[-1], eps=1e-6, affine=True, **factory)
        self.temp_conv_out = ops.Conv3d(channels[-1], channels[-1], (3, 1, 1), padding=(1, 0, 0), **factory)
        self.conv_out = ops.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1, **factory)

    def forward(self, video):
        """[B, 3, T, H, W] in [-1, 1] → raw moments [B, 8, T/4, H/8, W/8] (before quant_conv)."""
        batch = video.shape[0]
        x = per_frame(self.conv_in, video)
        x = temporal_residual(self.temp_conv_in, x, self.reference_ops)
        frames = video_to_frames(x)
        for block in self.down_blocks:
            frames = block(frames, batch)
        frames = F.silu(self.conv_norm_out(self.mid_block(frames, batch)), inplace=True)
        x = frames_to_video(frames, batch)
        x = temporal_residual(self.temp_conv_out, x, self.reference_ops)
        return per_frame(self.conv_out, x)


class Decoder(nn.Module):
    # The decoder uses the faster CPU kernels (same math; tests bound the rounding against the reference).
    reference_ops = False

    def __init__(self, config: VAEConfig, ops, **factory):
        super().__init__()
        channels, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = ops.Conv2d(config.latent_channels, channels[0], 3, padding=1, **factory)
        self.temp_conv_in = ops.Conv3d(channels[0], channels[0], (3, 1, 1), padding=(1, 0, 0), **factory)
        self.mid_block = MidBlock(channels[0], groups, ops, reference_ops=self.reference_ops, **factory)
        self.up_blocks = nn.ModuleList([
            ResampleBlock(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups, ops,
                          spatial=i < len(channels) - 1, temporal=config.temporal_upsample_blocks[i],
                          direction="up", reference_ops=self.reference_ops, **factory)
            for i in range(len(channels))])
        self.conv_norm_out = ops.GroupNorm(groups, channels[-1], eps=1e-6, affine=True, **factory)
        self.temp_conv_out = ops.Conv3d(channels[-1], channels[-1], (3, 1, 1), padding=(1, 0, 0), **factory)
        self.conv_out = ops.Conv2d(channels[-1], config.out_channels, 3, padding=1, **factory)

    def forward(self, latent):
        """[B, 4, t, h, w] (after post_quant_conv) → [B, 3, 4t, 8h, 8w], roughly in [-1, 1]."""
        if vae_cpu.supported(latent) and all(vae_cpu.supported(p) for p in self.parameters()):
            return vae_cpu.decode(self, latent)
        batch = latent.shape[0]
        x = per_frame(self.conv_in, latent)
        x = temporal_residual(self.temp_conv_in, x, self.reference_ops)
        frames = self.mid_block(video_to_frames(x), batch)
        up_dtype = self.up_blocks[0].resnets[0].conv1.weight.dtype
        frames = frames.to(up_dtype)
        for block in self.up_blocks:
            frames = block(frames, batch)
        frames = F.silu(self.conv_norm_out(frames), inplace=True)
        x = frames_to_video(frames, batch)
        x = temporal_residual(self.temp_conv_out, x, self.reference_ops)
        return per_frame(self.conv_out, x)


class AllegroVAE(nn.Module):
    def __init__(self, config: VAEConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.encoder = Encoder(config, operations, **factory)
        self.decoder = Decoder(config, operations, **factory)
        self.quant_conv = operations.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1, **factory)
        self.post_quant_conv = operations.Conv2d(config.latent_channels, config.latent_channels, 1, **factory)

    @property
    def dtype(self):
        return self.post_quant_conv.weight.dtype

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """One tile: [B, 3, T, H, W] in [-1, 1] → raw moments [B, 8, T/4, H/8, W/8] (blend these,
        then apply `moments_to_mean`)."""
        return self.encoder(video)

    def moments_to_mean(self, moments: torch.Tensor) -> torch.Tensor:
        """Blended raw moments → posterior mean [B, 4, t, h, w] (VAE space, not scaled)."""
        return per_frame(self.quant_conv, moments)[:, :self.config.latent_channels]

    def prepare_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """post_quant_conv, a per-pixel 1x1 conv the reference applies to the whole latent once."""
        return per_frame(self.post_quant_conv, latent)

    def decode_tile(self, latent: torch.Tensor) -> torch.Tensor:
        """One tile of a prepared latent [B, 4, t, h, w] → pixels [B, 3, 4t, 8h, 8w]."""
        return self.decoder(latent)
