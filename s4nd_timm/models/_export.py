"""Freezing S4ND kernels for export (ONNX, and fixed-size inference).

ONNX has no complex tensors, and both axis-kernel families generate their taps with complex arithmetic
(Vandermonde products, Cauchy sums, an inverse FFT). The taps depend only on the parameters, the axis
length and the rate, so for a model exported at a fixed input size they are constants.
``freeze_s4nd_kernels`` runs the model once on an example input, records every axis kernel's taps, and
replaces each kernel module by a ``FrozenAxisKernel`` that returns them. What is left to trace is real:
the two-sided assembly and the convolution (use ``model.s4nd_backend = 'matmul'`` for ONNX: Toeplitz
matmuls, no FFT). The frozen model is for inference at the frozen input size(s) only: the SSM parameters
are gone from it (its state dict holds the taps instead).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from s4nd_timm.layers import S4ND

__all__ = ['FrozenAxisKernel', 'freeze_s4nd_kernels']


class FrozenAxisKernel(nn.Module):
    """Stands in for an axis kernel: returns the taps recorded for each (length, rate) request.

    Args:
        taps: {(length, rate): (C_k, H, length) tensor}.
    """

    def __init__(self, taps: Dict[Tuple[int, float], Tensor]):
        super().__init__()
        self._names = {}
        for i, (key, value) in enumerate(taps.items()):
            self.register_buffer(f'taps_{i}', value)
            self._names[key] = f'taps_{i}'

    def extra_repr(self) -> str:
        return f"requests={sorted(self._names)}"

    def forward(self, length: int, rate: float = 1.0) -> Tensor:
        """Recorded causal taps (C_k, H, length)."""
        name = self._names.get((int(length), float(rate)))
        if name is None:
            raise RuntimeError(
                f"this S4ND kernel was frozen for (length, rate) in {sorted(self._names)}; got ({length}, {rate}). "
                "Freeze the unfrozen model again with an input of the size you run (freeze_s4nd_kernels(model, x)).")
        return getattr(self, name)


@torch.no_grad()
def freeze_s4nd_kernels(model: nn.Module, *example_args, **example_kwargs) -> nn.Module:
    """Replace every S4ND axis kernel of ``model`` by its taps at the example input's size (in place).

    Args:
        model: any module holding S4ND layers (set ``eval()`` first if it has train-time behaviour).
        example_args, example_kwargs: a forward call, e.g. ``torch.randn(1, 3, 224, 224)``; run once.
    Returns:
        ``model``, whose S4ND layers no longer generate kernels (no complex ops: ONNX-exportable with the
        matmul backend). Raises at run time on an input size it was not frozen for.
    """
    layers = [m for m in model.modules() if isinstance(m, S4ND)]
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no S4ND layer; nothing to freeze")
    records: Dict[nn.Module, Dict[Tuple[int, float], Tensor]] = {}

    def record(layer, args, kwargs):  # the (taps, rate) each axis kernel is asked for at this input
        x = args[0]
        rate = kwargs.get('rate', args[1] if len(args) > 1 else None)
        spatial = tuple(x.shape[2:] if layer.layout == 'channels_first' else x.shape[1:-1])
        rates = layer.rates(spatial, rate)
        for kernel, taps, r in zip(layer.kernel, layer.kernel_lengths(spatial, rates), rates):
            if not isinstance(kernel, FrozenAxisKernel):
                records.setdefault(kernel, {})[(int(taps), float(r))] = kernel(taps, r).detach().clone()

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        model(*example_args, **example_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    for layer in layers:
        for i, kernel in enumerate(layer.kernel):
            if kernel in records:
                layer.kernel[i] = FrozenAxisKernel(records[kernel])
    return model
