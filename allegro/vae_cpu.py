"""The VAE decoder on CPU: the same modules and weights as `vae_blocks`, run in channels-last layout.

Three things make the reference's decoder slow on a CPU, and none is arithmetic:
- oneDNN convolves few-channel activations 2-4x faster with the channels innermost (same sums),
  so every activation here is a `[B, T, H, W, C]` tensor ("cl video") that layers see through
  channels-last views;
- every fresh activation-sized tensor costs page faults about half as long as the convolution
  that fills it, so convolutions add into buffers that are reused (`Buffers`; oneDNN's fused
  "add" writes conv(x) + buffer in place), and residual sums are fused into them;
- the reference copies each temporal layer's input with its edge frames repeated before the norm;
  here the edge frames count twice in the statistics and are added back after a zero-padded
  convolution, without a copy.
PyTorch's channels-last GroupNorm loses accuracy (sums in one pass: errors 3e-5 against 1e-6), so
`group_norm` computes cascaded sums and the second moment about the mean as a matrix product of the
centred rows. Everything is the reference's math in another summation order; tests bound the
difference (<= 1e-5 relative on whole decodes).
"""
import torch
import torch.nn.functional as F


def supported(x: torch.Tensor) -> bool:
    """The executor's domain: float32 on a CPU with oneDNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _fused_add_conv():
    """oneDNN's convolution that adds its result into a given tensor in place (PyTorch >= 2.1), or None."""
    try:
        return torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None


FUSED_ADD_CONV = _fused_add_conv()


class Buffers:
    """Activation buffers handed out again once given back: a reused buffer is already mapped, a new
    one faults in page by page. Keyed by shape; `clear` drops them (between resolutions)."""

    def __init__(self):
        self.free: dict[tuple, list] = {}

    def take(self, shape, like: torch.Tensor) -> torch.Tensor:
        stack = self.free.get(tuple(shape))
        return stack.pop() if stack else torch.empty(shape, dtype=like.dtype, device=like.device)

    def give(self, *tensors: torch.Tensor):
        for t in tensors:
            self.free.setdefault(tuple(t.shape), []).append(t)

    def clear(self):
        self.free.clear()


# --- layouts: a cl video [B, T, H, W, C] seen as what a layer expects ---------------------------
def as_frames(v: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, C] → [B*T, C, H, W] (a channels-last view)."""
    return v.flatten(0, 1).permute(0, 3, 1, 2)


def as_video(v: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, C] → [B, C, T, H, W] (a channels-last-3d view)."""
    return v.permute(0, 4, 1, 2, 3)


def weights(layer, x: torch.Tensor):
    bias = None if layer.bias is None else layer.bias.to(dtype=x.dtype, device=x.device)
    return layer.weight.to(dtype=x.dtype, device=x.device), bias


# --- GroupNorm ---------------------------------------------------------------------------------
def edge_frames(rows: torch.Tensor, frame_rows: int) -> torch.Tensor:
    """The first and last frame of each set of `rows` [S, R, C] as a view [S, 2, frame_rows, C]."""
    sets, count, channels = rows.shape
    return rows.as_strided((sets, 2, frame_rows, channels), (count * channels, (count - frame_rows) * channels, channels, 1))


def group_norm(norm, v: torch.Tensor, per_frame: bool, silu: bool, out: torch.Tensor,
               edges: bool = False) -> torch.Tensor:
    """GroupNorm (then SiLU) of a cl video into `out` (may be `v`), statistics per frame (the 2-D
    layers' norms) or per video (the temporal layers'). `edges`: statistics of the video with its
    first and last frame repeated, as the reference's temporal layers normalise their padded input."""
    batch, frames, height, width, channels = v.shape
    sets, groups = (batch * frames if per_frame else batch), norm.num_groups
    per_group = channels // groups
    rows, out_rows = v.view(sets, -1, channels), out.view(sets, -1, channels)
    count = (rows.shape[1] + (2 * height * width if edges else 0)) * per_group

    def group_mean(per_channel):                   # [S, C] sums → [S, C] means over each group, float64
        grouped = per_channel.double().view(sets, groups, per_group).sum(2) / count
        return grouped.repeat_interleave(per_group, 1)

    def wide(values):                              # [S, C] → [S, 1, W*C]: broadcasts along whole image rows
        return values.to(v.dtype).repeat(1, width).view(sets, 1, width * channels)

    def gram_diagonal(x):                          # [S, R, C] → Σ_r x² per channel [S, C]
        return torch.bmm(x.transpose(1, 2), x).diagonal(dim1=1, dim2=2)

    sums = rows.sum(1)
    if edges:
        sums = sums + edge_frames(rows, height * width).sum((1, 2))
    mean = group_mean(sums)
    wide_out = out_rows.view(sets, -1, width * channels)
    torch.sub(rows.view(sets, -1, width * channels), wide(mean), out=wide_out)           # centred, in `out`
    squares = gram_diagonal(out_rows)
    if edges:
        squares = squares + gram_diagonal(edge_frames(out_rows, height * width).flatten(0, 1)).view(sets, 2, -1).sum(1)
    weight, bias = weights(norm, v)
    scale = (group_mean(squares) + norm.eps).rsqrt() * weight.double()
    torch.addcmul(wide(bias.double().expand(sets, -1)), wide_out, wide(scale), out=wide_out)
    if silu:
        F.silu(out, inplace=True)
    return out


# --- convolutions ------------------------------------------------------------------------------
def convolve(x: torch.Tensor, weight, bias, padding, out: torch.Tensor, accumulate: bool):
    """out = conv(x) (`accumulate`: out += conv(x)) for channels-last x / out views, in place."""
    if FUSED_ADD_CONV is not None:
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if not accumulate:
            if bias is None:
                out.zero_()
            else:
                out.copy_(bias.view(-1, *[1] * (x.dim() - 2)).expand_as(out))
            bias = None
        dims = x.dim() - 2
        FUSED_ADD_CONV(out, x, weight.contiguous(memory_format=memory_format), bias, list(padding), [1] * dims,
                       [1] * dims, 1, "add", None, None, [], None)
    else:
        y = torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, (1,) * (x.dim() - 2), (1,) * (x.dim() - 2), 1)
        out.add_(y) if accumulate else out.copy_(y)
    return out


def conv2d(conv, v: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """A per-frame stride-1 Conv2d of a cl video into `out` (a cl video of the output's shape)."""
    convolve(as_frames(v), *weights(conv, v), conv.padding, as_frames(out), accumulate)
    return out


def conv_in_time(conv, v: torch.Tensor, out: torch.Tensor, replicate_edges: bool, accumulate: bool = False):
    """A Conv3d with a 3-frame kernel and one frame of padding each side into `out`: zeros, or with
    `replicate_edges` copies of the first / last frame (the reference's edge-padded input)."""
    weight, bias = weights(conv, v)
    padding = (1,) + tuple(conv.padding[1:])
    convolve(as_video(v), weight, bias, padding, as_video(out), accumulate)
    if replicate_edges:
        for frame, tap in ((0, 0), (-1, 2)):
            kernel = weight[:, :, tap]                                         # [Co, C, kh, kw]
            if kernel.shape[-2:] == (1, 1):
                out[:, frame] += v[:, frame] @ kernel[:, :, 0, 0].t()
            else:
                edge = F.conv2d(v[:, frame].permute(0, 3, 1, 2), kernel, None, 1, conv.padding[1:])
                out[:, frame] += edge.permute(0, 2, 3, 1)
    return out


# --- blocks ------------------------------------------------------------------------------------
def resnet(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """ResnetBlock; consumes `v` (its buffer may become the output)."""
    shape = v.shape[:-1] + (block.conv1.out_channels,)
    normed = group_norm(block.norm1, v, per_frame=True, silu=True, out=buffers.take(v.shape, v))
    h = conv2d(block.conv1, normed, buffers.take(shape, v))
    buffers.give(normed)
    group_norm(block.norm2, h, per_frame=True, silu=True, out=h)
    if block.conv_shortcut is None:
        out = conv2d(block.conv2, h, v, accumulate=True)                        # v + conv2(h), in place
    else:
        out = conv2d(block.conv2, h, buffers.take(shape, v))
        conv2d(block.conv_shortcut, v, out, accumulate=True)
        buffers.give(v)
    buffers.give(h)
    return out


def temporal_stack(stack, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """TemporalConvStack (plain or "up") of a cl video; consumes `v`."""
    layers = [stack.conv1, stack.conv2, stack.conv3, stack.conv4]
    if stack.mode == "plain":
        identity, h = v, group_norm(layers[0][0], v, per_frame=False, silu=True, out=buffers.take(v.shape, v), edges=True)
    elif stack.mode == "up":
        batch, frames, height, width, channels = v.shape
        shape = (batch, 2 * frames, height, width, channels)
        identity = buffers.take(shape, v)                                        # every frame twice
        identity.view(batch, frames, 2, -1).copy_(v.view(batch, frames, 1, -1).expand(-1, -1, 2, -1))
        group_norm(layers[0][0], v, per_frame=False, silu=True, out=v)
        conv = layers.pop(0)[-1]                                               # kernel (1, 3, 3): C → 2C
        weight, bias = weights(conv, v)
        doubled = buffers.take(v.shape[:-1] + (weight.shape[0],), v)
        convolve(as_video(v), weight, bias, conv.padding, as_video(doubled), accumulate=False)
        buffers.give(v)
        # channel halves become alternate frames: [B, T, H, W, 2, C] → [B, T, 2, H, W, C]
        h = buffers.take(shape, v)
        h.view(batch, frames, 2, height, width, channels).copy_(
            doubled.view(batch, frames, height, width, 2, channels).permute(0, 1, 4, 2, 3, 5))
        buffers.give(doubled)
        group_norm(layers[0][0], h, per_frame=False, silu=True, out=h, edges=True)
    else:
        raise NotImplementedError("the CPU executor runs the decoder only")
    for index, layer in enumerate(layers):
        if index:
            group_norm(layer[0], h, per_frame=False, silu=True, out=h, edges=True)
        last = index == len(layers) - 1
        out = identity if last else buffers.take(h.shape, h)
        conv_in_time(layer[-1], h, out, replicate_edges=True, accumulate=last)   # the last adds the residual
        buffers.give(h)
        h = out
    return h


def attention(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """SpatialAttention of a cl video; adds into `v` in place."""
    batch, frames, height, width, channels = v.shape
    normed = group_norm(block.group_norm, v, per_frame=True, silu=False, out=buffers.take(v.shape, v))
    tokens = normed.view(batch * frames, height * width, channels)
    q, k, value = (F.linear(tokens, *weights(proj, tokens))[:, None] for proj in (block.to_q, block.to_k, block.to_v))
    buffers.give(normed)
    out = F.scaled_dot_product_attention(q, k, value)[:, 0]
    return v.add_(F.linear(out, *weights(block.to_out[0], out)).view_as(v))


def upsample(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """Nearest x2 then a 3x3 conv."""
    batch, frames, height, width, channels = v.shape
    doubled = buffers.take((batch, frames, 2 * height, 2 * width, channels), v)
    doubled.view(batch, frames, height, 2, width, 2, channels).copy_(v[:, :, :, None, :, None].expand(-1, -1, -1, 2, -1, 2, -1))
    buffers.give(v)
    out = conv2d(block.conv, doubled, torch.empty(doubled.shape[:-1] + (block.conv.out_channels,), dtype=v.dtype))
    buffers.clear()                               # the lower resolution's buffers: no further use
    return out


def resample_block(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    for layer, temporal in zip(block.resnets, block.temp_convs):
        v = temporal_stack(temporal, resnet(layer, v, buffers), buffers)
    if block.temporal_name is not None:
        v = temporal_stack(getattr(block, block.temporal_name), v, buffers)
    samplers = getattr(block, block.spatial_name)
    if samplers is not None:
        v = upsample(samplers[0], v, buffers)
    return v


def mid_block(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    v = temporal_stack(block.temp_convs[0], resnet(block.resnets[0], v, buffers), buffers)
    v = attention(block.attentions[0], v, buffers)
    return temporal_stack(block.temp_convs[1], resnet(block.resnets[1], v, buffers), buffers)


def temporal_residual(conv, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """v + conv(v) for the zero-padded (3, 1, 1) temp_conv_in / temp_conv_out."""
    out = buffers.take(v.shape, v).copy_(v)
    conv_in_time(conv, v, out, replicate_edges=False, accumulate=True)
    buffers.give(v)
    return out


def decode(decoder, latent: torch.Tensor) -> torch.Tensor:
    """`Decoder.forward` on CPU: [B, 4, t, h, w] → [B, 3, 4t, 8h, 8w] (a channels-last-3d tensor).
    """
    buffers = Buffers()
    x = latent.permute(0, 2, 3, 4, 1).contiguous()
    v = conv2d(decoder.conv_in, x, buffers.take(x.shape[:-1] + (decoder.conv_in.out_channels,), x))
    v = mid_block(decoder.mid_block, temporal_residual(decoder.temp_conv_in, v, buffers), buffers)
    for block in decoder.up_blocks:
        v = resample_block(block, v, buffers)
    group_norm(decoder.conv_norm_out, v, per_frame=True, silu=True, out=v)
    v = temporal_residual(decoder.temp_conv_out, v, buffers)
    out = conv2d(decoder.conv_out, v, torch.empty(v.shape[:-1] + (decoder.conv_out.out_channels,), dtype=v.dtype))
    buffers.give(v)
    return as_video(out)
