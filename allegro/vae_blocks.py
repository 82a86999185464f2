"""Building blocks of the Allegro 3-D VAE: per-frame 2-D ResNet blocks interleaved with temporal
convolution stacks, and the per-frame spatial attention of the middle block.

Layouts: "frames" is [B*T, C, H, W] (2-D layers run on it, so their GroupNorms see one frame);
"video" is [B, C, T, H, W] (temporal layers run on it, so their GroupNorms see the whole tile —
which is why the reference's tile geometry changes the result). Tensor names follow diffusers'
AutoencoderKLAllegro.
"""
import torch
import torch.nn.functional as F
from torch import nn


def frames_to_video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T, C, H, W] → [B, C, T, H, W]"""
    return x.unflatten(0, (batch, -1)).permute(0, 2, 1, 3, 4)


def video_to_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] → [B*T, C, H, W]"""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


def repeat_edge_frames(x: torch.Tensor) -> torch.Tensor:
    """Pad the time axis of [B, C, T, H, W] by one copy of the first and of the last frame."""
    return torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a (1x1-projected) skip, per frame."""

    def __init__(self, in_channels, out_channels, groups, ops, **factory):
        super().__init__()
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=1e-6, affine=True, **factory)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1, **factory)
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=1e-6, affine=True, **factory)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1, **factory)
        self.conv_shortcut = ops.Conv2d(in_channels, out_channels, 1, **factory) if in_channels != out_channels else None

    def forward(self, x):
        # In-place activations and sums on tensors made here: at full resolution a fresh
        # activation-sized tensor costs as much as the op itself (page faults), and the math is unchanged.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.conv_shortcut(x) if self.conv_shortcut is not None else x)


def conv3d(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv(x), on CPU always through oneDNN: PyTorch sends some small Conv3d shapes to its slow
    reference kernel (16x slower for the 60x60 tiles of the decoder's middle stage). Same math."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        weight = conv.weight.to(dtype=x.dtype, device=x.device).contiguous()
        bias = None if conv.bias is None else conv.bias.to(dtype=x.dtype, device=x.device)
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, bias, conv.padding, conv.stride,
                                                 conv.dilation, conv.groups)
    return conv(x)


def temporal_pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            zero_padded: bool = False) -> torch.Tensor:
    """A (3,1,1) Conv3d as three matrix products on frame-shifted flat views:
    out[t] = W0 x[t] + W1 x[t+1] + W2 x[t+2] over frames 0..T+1 of x [B, C, T+2, H, W] → [B, Co, T, ...];
    with `zero_padded`, x has T frames and frames -1 and T count as zeros (padding=(1, 0, 0)).
    The convolution's sums in another order (tests bound the rounding); 3-4x faster than Conv3d on CPU
    at the VAE's full-resolution stage, where the layer is memory-bound."""
    weight = weight.to(device=x.device, dtype=x.dtype)[:, :, :, 0, 0]               # [Co, C, 3]
    bias = bias.to(device=x.device, dtype=x.dtype)
    batch, channels, in_frames, height, width = x.shape
    frames, pixels = (in_frames if zero_padded else in_frames - 2), height * width
    out = torch.empty(batch, weight.shape[0], frames, height, width, dtype=x.dtype, device=x.device)
    x = x.contiguous()
    for b in range(batch):
        source, target = x[b].view(channels, in_frames * pixels), out[b].view(-1, frames * pixels)
        if zero_padded:
            torch.addmm(bias[:, None], weight[:, :, 1], source, out=target)
            target[:, pixels:].addmm_(weight[:, :, 0], source[:, :-pixels])       # previous frame
            target[:, :-pixels].addmm_(weight[:, :, 2], source[:, pixels:])       # next frame
        else:
            torch.addmm(bias[:, None], weight[:, :, 0], source[:, :frames * pixels], out=target)
            target.addmm_(weight[:, :, 1], source[:, pixels:(frames + 1) * pixels])
            target.addmm_(weight[:, :, 2], source[:, 2 * pixels:])
    return out


def norm_act_conv(channels, out_channels, kernel, groups, ops, stride=1, padding=0, dropout_slot=False, **factory):
    """GroupNorm → SiLU → (Dropout slot) → Conv3d, as an indexed Sequential (the reference's names)."""
    layers = [ops.GroupNorm(groups, channels, eps=1e-5, affine=True, **factory), nn.SiLU(inplace=True)]
    if dropout_slot:
        layers.append(nn.Identity())                  # the reference's Dropout position (inference: identity)
    layers.append(ops.Conv3d(channels, out_channels, kernel, stride=stride, padding=padding, **factory))
    return nn.Sequential(*layers)


class TemporalConvStack(nn.Module):
    """Four norm-act-conv3d layers over time with a residual; optionally halves (encoder) or doubles
    (decoder) the frame count. Plain stacks convolve (3,1,1); resampling ones (3,3,3)."""

    def __init__(self, channels, groups, ops, mode="plain", reference_ops=False, **factory):
        super().__init__()
        self.mode = mode
        # Reference op order (plain Conv3d calls, as diffusers and the original run them) instead
        # of the faster kernels. The results differ only by float rounding, but GroupNorms amplify
        # rounding wherever an input is nearly constant (a black frame): the TI2V encoder, whose
        # input is a black video with one or two images, must round exactly as the reference does.
        self.reference_ops = reference_ops
        k = 1 if mode == "plain" else 3                     # spatial kernel
        pad = (0, k // 2, k // 2)
        if mode == "down":
            self.conv1 = norm_act_conv(channels, channels, (2, k, k), groups, ops, stride=(2, 1, 1), padding=pad, **factory)
        elif mode == "up":
            self.conv1 = norm_act_conv(channels, 2 * channels, (1, k, k), groups, ops, padding=pad, **factory)
        else:
            self.conv1 = norm_act_conv(channels, channels, (3, k, k), groups, ops, padding=pad, **factory)
        self.conv2 = norm_act_conv(channels, channels, (3, k, k), groups, ops, padding=pad, dropout_slot=True, **factory)
        self.conv3 = norm_act_conv(channels, channels, (3, k, k), groups, ops, padding=pad, dropout_slot=True, **factory)
        self.conv4 = norm_act_conv(channels, channels, (3, k, k), groups, ops, padding=pad, **factory)

    def forward(self, frames: torch.Tensor, batch: int) -> torch.Tensor:
        """[B*T, C, H, W] → [B*T', C, H, W] with T' = T, T/2 (down) or 2T (up)."""
        x = frames_to_video(frames, batch)
        if self.mode == "down":
            identity, h = x[:, :, ::2], self.convolve(self.conv1[-1], self.conv1[:-1](x))
        elif self.mode == "up":
            identity = x.repeat_interleave(2, dim=2)
            h = self.convolve(self.conv1[-1], self.conv1[:-1](x))      # [B, 2C, T, H, W]
            # channel halves become alternate frames: [B, 2, C, T, ...] → [B, C, T, 2, ...] → [B, C, 2T, ...]
            h = h.unflatten(1, (2, -1)).permute(0, 2, 3, 1, 4, 5).flatten(2, 3)
        else:
            identity, h = x, self.convolve_in_time(self.conv1, x)
        for layer in (self.conv2, self.conv3, self.conv4):
            h = self.convolve_in_time(layer, h)
        return video_to_frames(h.add_(identity))

    def convolve(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x) if self.reference_ops else conv3d(conv, x)

    def convolve_in_time(self, layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Repeat the edge frames (the reference pads before the norm, so they count in its
        statistics), then norm → act → conv over time."""
        h = layer[:-1](repeat_edge_frames(x))
        conv = layer[-1]
        if tuple(conv.kernel_size[1:]) == (1, 1) and not self.reference_ops:
            return temporal_pointwise_conv(h, conv.weight, conv.bias)
        return self.convolve(conv, h)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame, with GroupNorm and a residual."""

    def __init__(self, channels, groups, ops, **factory):
        super().__init__()
        self.group_norm = ops.GroupNorm(groups, channels, eps=1e-6, affine=True, **factory)
        self.to_q = ops.Linear(channels, channels, bias=True, **factory)
        self.to_k = ops.Linear(channels, channels, bias=True, **factory)
        self.to_v = ops.Linear(channels, channels, bias=True, **factory)
        self.to_out = nn.ModuleList([ops.Linear(channels, channels, bias=True, **factory)])

    def forward(self, x):
        """x [N, C, H, W] (N = frames) → same."""
        n, c, h, w = x.shape
        tokens = self.group_norm(x.view(n, c, h * w)).transpose(1, 2)          # [N, HW, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))   # [N, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)


class MidBlock(nn.Module):
    """ResNet + temporal stack, attention, ResNet + temporal stack."""

    def __init__(self, channels, groups, ops, reference_ops=False, **factory):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, ops, **factory) for _ in range(2)])
        self.temp_convs = nn.ModuleList([TemporalConvStack(channels, groups, ops, reference_ops=reference_ops, **factory)
                                         for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialAttention(channels, groups, ops, **factory)])

    def forward(self, frames, batch):
        frames = self.temp_convs[0](self.resnets[0](frames), batch)
        frames = self.attentions[0](frames)
        return self.temp_convs[1](self.resnets[1](frames), batch)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right."""

    def __init__(self, channels, ops, **factory):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, stride=2, padding=0, **factory)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels, ops, **factory):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1, **factory)

    def forward(self, x):
        upsampled = F.interpolate(x.float() if x.dtype == torch.bfloat16 else x, scale_factor=2.0, mode="nearest")
        return self.conv(upsampled.to(x.dtype))


class ResampleBlock(nn.Module):
    """`layers` x (ResNet, temporal stack), then optional temporal and spatial resampling."""

    def __init__(self, in_channels, out_channels, layers, groups, ops, spatial, temporal, direction, reference_ops=False,
                 **factory):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, ops, **factory)
                                      for i in range(layers)])
        self.temp_convs = nn.ModuleList([TemporalConvStack(out_channels, groups, ops, reference_ops=reference_ops, **factory)
                                         for _ in range(layers)])
        # The reference's names: temp_convs_down / downsamplers (encoder), temp_conv_up / upsamplers (decoder).
        self.temporal_name = ("temp_convs_down" if direction == "down" else "temp_conv_up") if temporal else None
        if temporal:
            setattr(self, self.temporal_name, TemporalConvStack(out_channels, groups, ops, mode=direction,
                                                                reference_ops=reference_ops, **factory))
        self.spatial_name = "downsamplers" if direction == "down" else "upsamplers"
        sampler = (Downsample if direction == "down" else Upsample)(out_channels, ops, **factory) if spatial else None
        setattr(self, self.spatial_name, nn.ModuleList([sampler]) if sampler is not None else None)

    def forward(self, frames, batch):
        for resnet, temporal in zip(self.resnets, self.temp_convs):
            frames = temporal(resnet(frames), batch)
        if self.temporal_name is not None:
            frames = getattr(self, self.temporal_name)(frames, batch)
        samplers = getattr(self, self.spatial_name)
        if samplers is not None:
            frames = samplers[0](frames)
        return frames
