"""Elementwise densities evaluated in cache-sized blocks.

Evaluation scores about four million values at once (K = 5000 draws × 784 pixels, one 16 MB chunk), and a
density's dozen elementwise passes each go to memory when they run over the whole chunk. Over blocks whose
buffers stay in the cache they run 1.3 to 1.6 times faster (README, "Speed"), with the same numbers to
float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# elements per block of an elementwise density evaluated without gradients: evaluation's chunks hold
# about 4 million values (K draws × pixels), and a dozen elementwise passes run 1.3 to 2 times as fast over
# blocks whose buffers (1 MB each) stay in the cache as over the whole chunk
BLOCK_ELEMENTS = 2**18


def in_blocks(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` for an elementwise ``fn``, computed over blocks of about :data:`BLOCK_ELEMENTS`
    along the first dimension of the broadcast inputs on the CPU when no gradient is recorded (evaluation);
    in one piece otherwise: on a GPU, whose kernel launches the blocks would only multiply, and in training,
    whose batches are small and whose autograd graph stays whole. The same operators on the same values:
    equal to float rounding (torch may round an element's ``exp`` or ``log`` on a SIMD or a scalar path
    depending on the block's shape).

    :param fn: elementwise in its arguments (each output entry depends on the same entry of each input).
    :param tensors: its arguments.
    """
    tensors = torch.broadcast_tensors(*tensors)
    first = tensors[0]
    # a GPU streams the whole chunk through its own memory hierarchy: blocks would only add kernel launches
    if first.device.type != "cpu" or first.dim() == 0 or first.numel() <= 2 * BLOCK_ELEMENTS:
        return fn(*tensors)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return fn(*tensors)
    rows = max(1, BLOCK_ELEMENTS // first[0].numel())
    out: torch.Tensor | None = None
    for start in range(0, len(first), rows):
        part = fn(*(t[start : start + rows] for t in tensors))
        if out is None:
            out = part.new_empty(first.shape)
        out[start : start + rows] = part
    assert out is not None
    return out
