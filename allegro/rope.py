"""3-D rotary position embedding of the Allegro DiT.

Each attention head of width D is split into three equal parts that rotate with the token's
frame, row and column index. Positions are divided by per-axis interpolation scales (2.2, 2.0,
2.0 for the released 88x720x1280 model), which is how Allegro stretches RoPE over its grid.
Tables are computed in float32 whatever the model dtype (as diffusers does; the original repo
computes them in the model dtype, which only changes bf16 results by rounding).
"""
import torch


def axis_tables(dim: int, length: int, scale: float, device=None, theta: float = 10000.0):
    """cos/sin tables for one axis: each [length, dim], positions 0..length-1 divided by `scale`."""
    inverse_frequency = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    positions = torch.arange(length, dtype=torch.float32, device=device) / scale
    angles = torch.outer(positions, inverse_frequency)                      # [length, dim / 2]
    # Halves (not interleaved pairs) rotate together: see `rotate`.
    return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([angles.sin(), angles.sin()], dim=-1)


class RotaryEmbedding3D:
    """Precomputed per-token cos/sin for a (frames, rows, cols) token grid, row-major (t, h, w)."""

    def __init__(self, head_dim: int, grid: tuple[int, int, int], scales: tuple[float, float, float], device=None,
                 share_equal_lengths: bool = False):
        """`share_equal_lengths` reproduces the original repo (the only TI2V implementation): it
        caches tables by (dim, length), so an axis as long as an earlier one reuses that axis's
        table and scale. diffusers (the T2V reference) keeps one table per axis. The two differ
        only when the latent frame count equals the token rows or columns."""
        if head_dim % 6:
            raise ValueError(f"attention_head_dim must be divisible by 6 for 3-D RoPE, got {head_dim}")
        axis_dim = head_dim // 3
        frames, rows, cols = self.grid = tuple(grid)
        tables, by_length = [], {}
        for length, scale in zip(grid, scales):
            if not share_equal_lengths or length not in by_length:
                by_length[length] = axis_tables(axis_dim, length, scale, device)
            tables.append(by_length[length])
        # Expand each axis table to every token of the grid: [frames * rows * cols, axis_dim].
        t_index = torch.arange(frames, device=device).repeat_interleave(rows * cols)
        h_index = torch.arange(rows, device=device).repeat_interleave(cols).repeat(frames)
        w_index = torch.arange(cols, device=device).repeat(frames * rows)
        self.cos = [table[0][index] for table, index in zip(tables, (t_index, h_index, w_index))]
        self.sin = [table[1][index] for table, index in zip(tables, (t_index, h_index, w_index))]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, tokens, head_dim] → same shape, rotated per axis (math in float32)."""
        parts = x.chunk(3, dim=-1)
        rotated = [rotate(part, cos, sin) for part, cos, sin in zip(parts, self.cos, self.sin)]
        return torch.cat(rotated, dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    half_turned = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + half_turned.float() * sin).to(x.dtype)
