"""The VAE decoder on CPU: the same modules and weights as `vae_blocks`, run in channels-last layout.

Three things make the reference's decoder slow on a CPU, and none of them is arithmetic:
- oneDNN convolves few-channel activations 2-4x faster with the channels innermost (same sums),
  so every activation here is a `[1, T, H, W, C]` tensor (a "cl video") that layers see through
  channels-last views;
- a fresh activation-sized tensor costs page faults worth half the convolution that fills it, so
  convolutions add into reused buffers (`Buffers`; oneDNN's fused "add" writes conv(x) + buffer
  in place) and residual sums are fused into them;
- each temporal layer's input gets its edge frames repeated before the norm, so the temporal
  layers keep their activations in buffers with one spare frame at each end (`[1, T + 2, ...]`):
  the norm writes the middle, the two edge frames are copied in, and the convolution reads the
  padded buffer as the reference's padded input, with nothing concatenated.
PyTorch's channels-last GroupNorm loses accuracy (float sums of squares in one pass: errors 3e-5
against 1e-6), so `group_norm` takes cascaded sums per frame and sums of squares as matrix products
over chunks of rows, combined in float64, and centres the rows first where the mean outweighs the
spread (where Σx² - n·mean² would cancel). All of it is the reference's math in
another summation order; tests bound the difference (<= 1e-5 relative on whole decodes).
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
    one faults in page by page. Keyed by shape; `clear` drops them (at each change of resolution)."""

    def __init__(self):
        self.free: dict[tuple, list] = {}

    def take(self, shape) -> torch.Tensor:
        stack = self.free.get(tuple(shape))
        return stack.pop() if stack else torch.empty(shape)

    def take_padded(self, shape) -> torch.Tensor:
        """A cl video buffer with a spare frame at each end."""
        return self.take((shape[0], shape[1] + 2, *shape[2:]))

    def give(self, *tensors: torch.Tensor):
        for t in tensors:
            self.free.setdefault(tuple(t.shape), []).append(t)

    def clear(self):
        self.free.clear()


# --- layouts: a cl video [1, T, H, W, C] seen as what a layer expects ---------------------------
def as_frames(v: torch.Tensor) -> torch.Tensor:
    """[1, T, H, W, C] → [T, C, H, W] (a channels-last view)."""
    return v.flatten(0, 1).permute(0, 3, 1, 2)


def as_video(v: torch.Tensor) -> torch.Tensor:
    """[1, T, H, W, C] → [1, C, T, H, W] (a channels-last-3d view)."""
    return v.permute(0, 4, 1, 2, 3)


def middle(padded: torch.Tensor) -> torch.Tensor:
    return padded[:, 1:-1]


def repeat_edge_frames(padded: torch.Tensor) -> torch.Tensor:
    """Fill the spare frames 0 and T+1 of a padded buffer with copies of frames 1 and T (one copy)."""
    frames, frame = padded.shape[1] - 2, padded[0, 0].numel()
    spare = padded.as_strided((2, frame), ((frames + 1) * frame, 1), padded.storage_offset())
    edges = padded.as_strided((2, frame), (max(frames - 1, 0) * frame, 1), padded.storage_offset() + frame)
    spare.copy_(edges)
    return padded


def weights(layer):
    return layer.weight, layer.bias


# --- GroupNorm ---------------------------------------------------------------------------------
def per_frame_squares(rows: torch.Tensor) -> torch.Tensor:
    """Σ x² per frame and channel of rows [T, P, C], float64 [T, C]: matrix products over chunks of
    each frame's rows summed in float64 (one product over 10^5-10^6 rows rounds at 1e-6)."""
    frames, pixels, channels = rows.shape
    chunks = max(1, min(64, pixels // 16384))
    while pixels % chunks:
        chunks //= 2
    parts = rows.reshape(frames * chunks, pixels // chunks, channels)
    products = torch.bmm(parts.transpose(1, 2), parts).diagonal(dim1=1, dim2=2)
    return products.double().view(frames, chunks, channels).sum(1)


def group_norm(norm, v: torch.Tensor, per_frame: bool, silu: bool, out: torch.Tensor,
               edges: bool = False) -> torch.Tensor:
    """GroupNorm (then SiLU) of a cl video into `out` (may be `v`), statistics per frame (the 2-D
    layers' norms) or over the video (the temporal layers'). `edges`: statistics of the video with
    its first and last frame repeated, as the reference's temporal layers normalise their padded input."""
    _, frames, height, width, channels = v.shape
    groups = norm.num_groups
    per_group = channels // groups
    rows, out_rows = v.view(frames, -1, channels), out.view(frames, -1, channels)
    count = height * width * per_group * (1 if per_frame else frames + 2 * edges)

    def per_set(per_frame_values):                # [T, C] float64 → [S, C]: each channel's group total
        totals = per_frame_values
        if not per_frame:
            totals = totals.sum(0, keepdim=True) + (totals[:1] + totals[-1:] if edges else 0)
        totals = totals.view(-1, groups, per_group).sum(2, keepdim=True)
        return totals.expand(-1, -1, per_group).reshape(-1, channels)

    def wide(values):                              # [S, C] → [S, 1, W*C]: broadcasts along whole image rows
        return values.float().repeat(1, width).view(-1, 1, width * channels)

    mean = per_set(rows.sum(1).double()) / count
    variance = per_set(per_frame_squares(rows)) / count - mean ** 2
    source, shift, wide_out = rows.view(frames, height, width * channels), mean, out_rows.view(frames, height, width * channels)
    if (mean ** 2 > variance).any():
        # Σx² - n·mean² cancels when the mean outweighs the spread: then take the moment about the mean
        torch.sub(source, wide(mean), out=wide_out)
        variance = per_set(per_frame_squares(out_rows)) / count
        source, shift = wide_out, torch.zeros_like(mean)
    scale = (variance + norm.eps).rsqrt() * norm.weight.double()
    torch.addcmul(wide(norm.bias.double() - shift * scale), source, wide(scale), out=wide_out)
    if silu:
        F.silu(out, inplace=True)
    return out


# --- convolutions ------------------------------------------------------------------------------
def convolve(x: torch.Tensor, weight, bias, padding, out: torch.Tensor, accumulate: bool = False):
    """out = conv(x) (`accumulate`: out += conv(x)), stride 1, for channels-last x / out views."""
    dims = x.dim() - 2
    if FUSED_ADD_CONV is not None:
        if not accumulate:
            out.zero_()
        memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        FUSED_ADD_CONV(out, x, weight.contiguous(memory_format=memory_format), bias, list(padding), [1] * dims,
                       [1] * dims, 1, "add", None, None, [], None)
    else:
        y = torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, (1,) * dims, (1,) * dims, 1)
        out.add_(y) if accumulate else out.copy_(y)
    return out


def conv2d(conv, v: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """A per-frame Conv2d of a cl video into `out` (a cl video of the output's shape)."""
    convolve(as_frames(v), *weights(conv), conv.padding, as_frames(out), accumulate)
    return out


def conv3d(conv, v: torch.Tensor, out: torch.Tensor, padding, accumulate: bool = False) -> torch.Tensor:
    convolve(as_video(v), *weights(conv), padding, as_video(out), accumulate)
    return out


# --- blocks ------------------------------------------------------------------------------------
def resnet(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """ResnetBlock; consumes `v` (its buffer may become the output)."""
    shape = v.shape[:-1] + (block.conv1.out_channels,)
    normed = group_norm(block.norm1, v, per_frame=True, silu=True, out=buffers.take(v.shape))
    h = conv2d(block.conv1, normed, buffers.take(shape))
    group_norm(block.norm2, h, per_frame=True, silu=True, out=h)
    if block.conv_shortcut is None:
        buffers.give(normed)
        out = conv2d(block.conv2, h, v, accumulate=True)                        # v + conv2(h), in place
    else:                                   # once per resolution: `normed` is not kept for reuse
        del normed
        out = conv2d(block.conv2, h, buffers.take(shape))
        conv2d(block.conv_shortcut, v, out, accumulate=True)
        buffers.give(v)
    buffers.give(h)
    return out


def temporal_stack(stack, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """TemporalConvStack (plain or "up") of a cl video; consumes `v`. Its four layers ping-pong
    between two padded buffers; the last one adds into the residual."""
    layers = [stack.conv1, stack.conv2, stack.conv3, stack.conv4]
    if stack.mode == "plain":
        identity, h = v, buffers.take_padded(v.shape)
        group_norm(layers[0][0], v, per_frame=False, silu=True, out=middle(h), edges=True)
    elif stack.mode == "up":
        _, frames, height, width, channels = v.shape
        identity = buffers.take((1, 2 * frames, height, width, channels))            # every frame twice
        identity.view(frames, 2, -1).copy_(v.view(frames, 1, -1).expand(-1, 2, -1))
        first = layers.pop(0)                                  # kernel (1, 3, 3), C → 2C; no edge frames
        group_norm(first[0], v, per_frame=False, silu=True, out=v)
        doubled = conv3d(first[-1], v, buffers.take(v.shape[:-1] + (2 * channels,)), first[-1].padding)
        buffers.give(v)
        # channel halves become alternate frames: [T, H, W, 2, C] → [T, 2, H, W, C]
        h = buffers.take_padded(identity.shape)
        middle(h).view(frames, 2, height, width, channels).copy_(
            doubled.view(frames, height, width, 2, channels).permute(0, 3, 1, 2, 4))
        buffers.give(doubled)
        group_norm(layers[0][0], middle(h), per_frame=False, silu=True, out=middle(h), edges=True)
    else:
        raise NotImplementedError("the CPU executor runs the decoder only")
    for index, layer in enumerate(layers):
        if index:
            group_norm(layer[0], middle(h), per_frame=False, silu=True, out=middle(h), edges=True)
        repeat_edge_frames(h)
        conv = layer[-1]
        padding = (0,) + tuple(conv.padding[1:])
        if index == len(layers) - 1:
            conv3d(conv, h, identity, padding, accumulate=True)                  # identity + conv(h)
            buffers.give(h)
            return identity
        out = buffers.take(h.shape)
        conv3d(conv, h, middle(out), padding)
        buffers.give(h)
        h = out


def attention(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """SpatialAttention of a cl video; adds into `v` in place."""
    _, frames, height, width, channels = v.shape
    normed = group_norm(block.group_norm, v, per_frame=True, silu=False, out=buffers.take(v.shape))
    tokens = normed.view(frames, height * width, channels)
    q, k, value = (F.linear(tokens, *weights(proj))[:, None] for proj in (block.to_q, block.to_k, block.to_v))
    buffers.give(normed)
    out = F.scaled_dot_product_attention(q, k, value)[:, 0]
    return v.add_(F.linear(out, *weights(block.to_out[0])).view_as(v))


def upsample(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """Nearest x2 then a 3x3 conv; drops the lower resolution's buffers."""
    _, frames, height, width, channels = v.shape
    doubled = torch.empty(1, frames, 2 * height, 2 * width, channels)
    doubled.view(frames, height, 2, width, 2, channels).copy_(
        v.view(frames, height, 1, width, 1, channels).expand(-1, -1, 2, -1, 2, -1))
    del v
    buffers.clear()
    return conv2d(block.conv, doubled, doubled.new_zeros(doubled.shape[:-1] + (block.conv.out_channels,)), accumulate=True)


def resample_block(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    for layer, temporal in zip(block.resnets, block.temp_convs):
        v = temporal_stack(temporal, resnet(layer, v, buffers), buffers)
    if block.temporal_name is not None:
        v = temporal_stack(getattr(block, block.temporal_name), v, buffers)
    samplers = getattr(block, block.spatial_name)
    return v if samplers is None else upsample(samplers[0], v, buffers)


def mid_block(block, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    v = temporal_stack(block.temp_convs[0], resnet(block.resnets[0], v, buffers), buffers)
    v = attention(block.attentions[0], v, buffers)
    return temporal_stack(block.temp_convs[1], resnet(block.resnets[1], v, buffers), buffers)


def temporal_residual(conv, v: torch.Tensor, buffers: Buffers) -> torch.Tensor:
    """v + conv(v) for the zero-padded (3, 1, 1) temp_conv_in / temp_conv_out."""
    out = buffers.take(v.shape).copy_(v)
    conv3d(conv, v, out, conv.padding, accumulate=True)
    buffers.give(v)
    return out


def decode(decoder, latent: torch.Tensor) -> torch.Tensor:
    """`Decoder.forward` on CPU: [B, 4, t, h, w] → [B, 3, 4t, 8h, 8w] (channels-last-3d), one
    sample at a time."""
    if latent.shape[0] > 1:
        return torch.cat([decode(decoder, sample[None]) for sample in latent])
    buffers = Buffers()
    x = latent.permute(0, 2, 3, 4, 1).contiguous()
    v = conv2d(decoder.conv_in, x, buffers.take(x.shape[:-1] + (decoder.conv_in.out_channels,)))
    v = mid_block(decoder.mid_block, temporal_residual(decoder.temp_conv_in, v, buffers), buffers)
    for block in decoder.up_blocks:
        v = resample_block(block, v, buffers)
    group_norm(decoder.conv_norm_out, v, per_frame=True, silu=True, out=v)
    v = temporal_residual(decoder.temp_conv_out, v, buffers)
    out = conv2d(decoder.conv_out, v, torch.empty(v.shape[:-1] + (decoder.conv_out.out_channels,)))
    return as_video(out)
