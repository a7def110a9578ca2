"""S4ND: multidimensional state-space layer for 1-D, 2-D and 3-D signals.

Paper: "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces",
Nguyen et al., NeurIPS 2022 (arXiv 2210.06583). Math: docs/design.md §2, §4, §5
(reference: state-spaces/s4 ``src/models/sequence/modules/s4nd.py``); one generic N-d code path.

Shape legend: B batch, H = ``dim`` features, d = ``ndim`` spatial axes, ``*spatial`` = L_1..L_d,
N ``d_state``, M = N/2, c = ``channels``, C_k = c x 2 if bidirectional else c.

What the layer computes (channels-first shapes; channels-last input is convolved in place by the
matmul and Triton paths, the FFT path moves it to channels-first and back):
    1. per axis i, a 1-D SSM kernel ``kernel[i]`` of L_k,i taps at rate r_i: diagonal S4D (``mode='diag'``,
       ``ssm.py``) or diagonal plus low-rank S4 (``mode='dplr'``, ``dplr.py``; what the reference configs ran);
    2. bidirectional: the first c of the C_k kernels are the forward (causal) taps, the last c the
       backward taps, the backward tap m-1 sitting at offset -m; the result is a two-sided kernel
       k_i of shape (c, H, 2 L_i - 1), index L_i - 1 = offset 0 (``axis_kernels``);
    3. y = linear "same" convolution of u with the outer product Π_i k_i, plus D u
       (shape (B, c H, *spatial), channel c*H + h);
    4. activation -> dropout -> output projection ``postact``: None (needs c == 1), 'linear'
       (Linear(cH -> H)) or 'glu' (Linear(cH -> 2H) then GLU).
With channels=1, activation=None, postact=None, dropout=0 the output is exactly step 3: the
linear convolution of the input with the outer product of ``axis_kernels(...)`` plus ``D * x``.

Resolution (docs/design.md §5): ``l_max`` is the base resolution. Continuous mode treats an input of
another size as the same continuous signal: per axis rate r_i = l_max_i / L_i scales Δ, and the
kernel has L_k,i = min(L_i, round(l_max_i / r_i)) taps (so the kernel covers the same extent).
Discrete mode uses r = 1 (kernels stay in pixels, L_k,i = min(L_i, l_max_i)). Without l_max the
rate is 1 and kernels span the whole input. ``forward(x, rate=...)`` overrides the rate (a float
or one per axis), as the reference's loaders do with r = base / actual.

Parameters (names as in the reference's current layout, docs/design.md §8):
    kernel.<i>.inv_dt (H, 1), kernel.<i>.A_real (S, M), kernel.<i>.A_imag (S, M),
    kernel.<i>.B (1, S, M, 2), kernel.<i>.C (C_k, H, M, 2)      for each axis i (0 = first spatial axis)
    kernel.<i>.P (R, S, M, 2), buffer kernel.<i>.l_kernel ()    mode='dplr' only; C then holds C̃ = C(I - Ā^L)
    D (c, H)
    output_linear.weight (H or 2H, c H), output_linear.bias     when postact is not None
SSM tensors (inv_dt, A_real, A_imag, B, P) carry ``p._optim = {'lr': ssm_lr, 'weight_decay': 0.}``.

Choices where the reference leaves room: kernels and FFTs run in float32 with autocast disabled and
the result is cast back to the input dtype (the reference casts fp16 to fp32 and ends in fp32);
postact=None with channels > 1 is refused rather than returning c x H features.
"""
import itertools
from collections import OrderedDict
from numbers import Real
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.fx import _symbolic_trace

from s4nd_timm.kernels import (
    LAYOUTS, axis_kernels_triton, check_backend, select_backend, separable_conv, triton_usable)
from .dplr import DPLRAxisKernel, dplr_taps
from .ssm import DiagAxisKernel, check_init, diag_taps, kernel_compute_dtype

__all__ = ['S4ND', 'LAYOUTS', 'RESOLUTIONS', 'check_resolution', 'kernel_cache_active', 'resolution_rates']

# LAYOUTS ('channels_first', 'channels_last') comes from the convolution paths; import both from here.
RESOLUTIONS = ('continuous', 'discrete')
TORCHSCRIPT_UNSUPPORTED = (
    "TorchScript is not supported by S4ND and the s4nd_* models (the S4ND layer's Python, e.g. per-axis tuples "
    "with None, backend selection by shape and complex kernel generation, is outside TorchScript's subset, and PyTorch "
    "deprecates TorchScript). Export with torch.export.export(model, (x,)) after model.s4nd_backend = 'matmul', or "
    "to ONNX after s4nd_timm.models.freeze_s4nd_kernels(model, x); see docs/models.md, 'Export'.")
ACTIVATIONS = ('gelu', None)
POSTACTS = (None, 'linear', 'glu')
MODES = ('diag', 'dplr')


def _per_axis(value, ndim: int, name: str) -> Tuple:
    """Broadcast a scalar (or None) to one value per axis; check the length of a sequence."""
    if value is None or isinstance(value, (str, Real)):
        return (value,) * ndim
    value = tuple(value)
    if len(value) != ndim:
        raise ValueError(f"{name} needs one value per spatial axis (ndim={ndim}); got {value}")
    return value


def check_resolution(resolution: str, name: str = 'resolution') -> str:
    """``resolution`` if it is a resolution mode (``RESOLUTIONS``), else a ValueError naming the argument ``name``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"{name}={resolution!r} is not supported; expected one of {RESOLUTIONS}")
    return resolution


def resolution_rates(
        l_max: Sequence[Optional[int]], lengths: Sequence[int], resolution: str, rate=None) -> Tuple[float, ...]:
    """The per-axis rate rule (docs/design.md §5), for the layer and for models that pass one rate to all layers.

    Args:
        l_max: base length per axis (None: no base resolution on that axis).
        lengths: the input's length per axis.
        resolution: 'continuous' (r_i = l_max_i / L_i, 1 without l_max) or 'discrete' (r = 1).
        rate: an override, a positive float or one per axis; returned as given.
    Returns:
        one float per axis.
    """
    ndim = len(lengths)
    if rate is not None:
        rates = _per_axis(rate, ndim, 'rate')
        if not all(r > 0 for r in rates):
            raise ValueError(f"rate must be positive; got {rate}")
        return tuple(float(r) for r in rates)
    if check_resolution(resolution) == 'discrete':
        return (1.0,) * ndim
    return tuple(1.0 if lm is None else lm / n for lm, n in zip(_per_axis(l_max, ndim, 'l_max'), lengths))


def two_sided(k: Tensor, length: int, channels: int, bidirectional: bool) -> Tensor:
    """Causal taps (C_k, H, L_k) -> two-sided kernel (c, H, 2 * length - 1), index length-1 = offset 0.

    Forward taps fill offsets 0..L_k-1; bidirectional: backward tap m-1 fills offset -m (m = 1..L_k),
    taps beyond offset -(length-1) cannot reach a same-size output and are dropped.
    """
    taps = k.shape[-1]
    fwd = F.pad(k[:channels], (length - 1, length - taps))
    if not bidirectional:
        return fwd
    m = min(taps, length - 1)
    bwd = F.pad(k[channels:, :, :m].flip(-1), (length - 1 - m, length))
    return fwd + bwd



def kernel_cache_active() -> bool:
    """True when ``S4ND.axis_kernels`` may reuse cached kernels: gradients off (``torch.no_grad``,
    ``torch.inference_mode``) and not inside torch.compile, torch.export, FX or TorchScript tracing."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()
                or _fx_symbolic_tracing())


def _fx_symbolic_tracing() -> bool:
    # is_fx_symbolic_tracing is the newer name (plain is_fx_tracing logs a warning there)
    check = getattr(_symbolic_trace, 'is_fx_symbolic_tracing', None) or _symbolic_trace.is_fx_tracing
    return check()


class _KernelCache:
    """The inference kernels of one layer: up to ``size`` (lengths, rates, generator) entries, least recently
    used dropped first, all dropped whenever the layer's kernel state (``S4ND._kernel_state``) changes."""

    def __init__(self, size: int = 4):
        self.size, self.state, self.entries = size, None, OrderedDict()

    def get(self, state: Tuple, key: Tuple) -> Optional[List[Tensor]]:
        if state != self.state:
            self.clear()
            self.state = state
            return None
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, state: Tuple, key: Tuple, kernels: List[Tensor]) -> None:
        self.state = state
        self.entries[key] = list(kernels)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.state = None
        self.entries.clear()


class S4ND(nn.Module):
    """S4ND layer: input (B, dim, *spatial) (or (B, *spatial, dim)), output the same shape and dtype.

    Args:
        dim: H, number of features.
        ndim: number of spatial axes d (1, 2 or 3).
        d_state: N, SSM state size (even); N/2 complex modes per axis kernel.
        channels: c, independent kernels per feature.
        bidirectional: two-sided (non-causal) kernels.
        l_max: base resolution, an int (every axis) or one per axis; None = no base resolution.
        init: SSM init, or one per axis. Both modes: 'legs', 'lin', 'inv', 'real', the 'diag-' spellings,
            'diag' (inv + lin); mode='dplr' only: 'fourier' (FouT), 'hippo' (legs + fourier). Combinations
            split the n_ssm sets in halves. 'legs'/'fourier' carry a low-rank P in DPLR mode, 'diag-*' P = 0.
        dt_min, dt_max: range of the log-uniform base step Δ.
        disc: diag mode: 'zoh' (default) or 'bilinear'; DPLR kernels are always bilinear (None or 'bilinear').
        bandlimit: None or a cutoff in (0, 1] (1 = Nyquist at base resolution), docs/design.md §4.
        activation: 'gelu' or None, applied after the convolution.
        postact: None, 'linear' or 'glu' output projection.
        dropout: dropout probability after the activation.
        layout: 'channels_first' (B, H, *spatial) or 'channels_last' (B, *spatial, H).
        resolution: 'continuous' (rate = l_max / L per axis) or 'discrete' (rate = 1).
        ssm_lr: learning-rate hint for the SSM tensors (no weight decay either way).
        n_ssm: S, number of (A, B[, P]) sets per axis, must divide dim.
        mode: axis-kernel family, 'diag' (S4D) or 'dplr' (S4, needs l_max on every axis; checkpoints of one
            mode are refused by a layer of the other).
        rank: R, rank of the DPLR low-rank term (mode='dplr'); only 1 is supported.
        backend: convolution path, 'auto' (by device, size and whether gradients are needed,
            ``s4nd_timm.kernels.select_backend``), 'direct', 'fft', 'matmul' or 'triton' (tiled kernels, CUDA);
            settable later through the ``backend`` attribute.
    """

    def __init__(
            self,
            dim: int,
            ndim: int = 2,
            d_state: int = 64,
            channels: int = 1,
            bidirectional: bool = True,
            l_max: Union[None, int, Sequence[Optional[int]]] = None,
            init: Union[str, Sequence[str]] = 'legs',
            dt_min: float = 1e-3,
            dt_max: float = 1e-1,
            disc: Optional[str] = None,
            bandlimit: Optional[float] = None,
            activation: Optional[str] = 'gelu',
            postact: Optional[str] = None,
            dropout: float = 0.0,
            layout: str = 'channels_first',
            resolution: str = 'continuous',
            ssm_lr: Optional[float] = None,
            n_ssm: int = 1,
            mode: str = 'diag',
            rank: int = 1,
            backend: str = 'auto',
    ):
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3 (spatial axes); got ndim={ndim}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels}")
        for name, value, allowed in (
                ('layout', layout, LAYOUTS),
                ('activation', activation, ACTIVATIONS), ('postact', postact, POSTACTS), ('mode', mode, MODES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; expected one of {allowed}")
        inits = _per_axis(init, ndim, 'init')
        for i in inits:
            check_init(i, mode)
        l_maxes = _per_axis(l_max, ndim, 'l_max')
        if mode == 'dplr':
            if None in l_maxes:
                raise ValueError(
                    f"mode='dplr' needs l_max on every axis (the kernel length its C̃ is built for); "
                    f"got l_max={l_max}. Pass l_max (the base resolution), or use mode='diag'.")
            if disc not in (None, 'bilinear'):
                raise ValueError(
                    f"mode='dplr' kernels are always bilinear (docs/design.md §1.2); got disc={disc!r}. Leave disc unset.")
        if bandlimit is not None and not bandlimit > 0:
            raise ValueError(f"bandlimit must be None or > 0; got {bandlimit}")
        if postact is None and channels > 1:
            raise ValueError(f"channels={channels} needs postact='linear' or 'glu' to map c*dim features back to dim")
        self.dim, self.ndim, self.d_state, self.channels = dim, ndim, d_state, channels
        self.bidirectional, self.layout, self.mode = bidirectional, layout, mode
        self.l_max = l_maxes
        self.resolution = resolution
        self.backend = backend
        self._kernel_cache = _KernelCache()
        kernel_channels = channels * (2 if bidirectional else 1)
        common = dict(dt_min=dt_min, dt_max=dt_max, n_ssm=n_ssm, bandlimit=bandlimit, ssm_lr=ssm_lr)
        self.kernel = nn.ModuleList([
            DiagAxisKernel(dim, d_state, kernel_channels, init=i, disc=disc or 'zoh', **common) if mode == 'diag'
            else DPLRAxisKernel(dim, d_state, kernel_channels, init=i, rank=rank, l_max=lm, **common)
            for i, lm in zip(inits, l_maxes)])
        self.D = nn.Parameter(torch.randn(channels, dim))
        self.activation = nn.GELU() if activation == 'gelu' else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.postact = postact
        if postact is None:
            self.output_linear = None
        else:
            self.output_linear = nn.Linear(channels * dim, dim * (2 if postact == 'glu' else 1))

    @property
    def resolution(self) -> str:
        return self._resolution

    @resolution.setter
    def resolution(self, value: str) -> None:
        self._resolution = check_resolution(value)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script`` before compiling: refuse with the export paths that work."""
        raise RuntimeError(TORCHSCRIPT_UNSUPPORTED)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ndim={self.ndim}, d_state={self.d_state}, channels={self.channels}, "
                f"bidirectional={self.bidirectional}, l_max={self.l_max}, mode={self.mode!r}, "
                f"layout={self.layout!r}, resolution={self.resolution!r}, backend={self.backend!r}")

    def rates(self, lengths: Sequence[int], rate=None) -> Tuple[float, ...]:
        """Per-axis rate for an input of these spatial lengths (the override, or the mode's rule)."""
        return resolution_rates(self.l_max, lengths, self.resolution, rate)

    def kernel_lengths(self, lengths: Sequence[int], rates: Sequence[float]) -> Tuple[int, ...]:
        """Taps per axis: L_k,i = min(L_i, round(l_max_i / r_i)) (L_i without l_max), at least 1."""
        return tuple(
            n if lm is None else max(1, min(n, round(lm / r)))
            for n, lm, r in zip(lengths, self.l_max, rates))

    def axis_kernels(self, lengths: Sequence[int], rate=None, backend: Optional[str] = None) -> List[Tensor]:
        """Two-sided per-axis kernels for an input of these spatial lengths.

        Args:
            lengths: L_1..L_d.
            rate: None (the layer's resolution mode, as in ``forward``), a float, or one per axis.
            backend: the convolution path the kernels are for (None: the layer's ``backend``; ``convolve``
                passes the path 'auto' resolved to). 'triton' with mode='diag' and float32 parameters on CUDA
                (or CPU under TRITON_INTERPRET=1) generates every axis kernel in one Triton launch
                (``s4nd_timm.kernels.axis_kernels_triton``); otherwise, and always for mode='dplr' (no Triton
                Cauchy/Woodbury kernel), they are generated in torch.
        Returns:
            d tensors, kernels[i]: (channels, dim, 2 L_i - 1), index L_i - 1 = offset 0; causal kernels
            hold zeros at negative offsets. float32 (float64 for float64 parameters).
        With gradients off (``kernel_cache_active``) the kernels are cached per (lengths, rates, generator) and
        reused until anything they depend on changes (``_kernel_state``, docs/design.md §12.3).
        """
        lengths = tuple(int(n) for n in lengths)
        if len(lengths) != self.ndim:
            raise ValueError(f"lengths needs {self.ndim} entries (one per spatial axis); got {lengths}")
        triton = ((backend or self.backend) == 'triton' and self.mode == 'diag' and self.D.dtype == torch.float32
                  and triton_usable(self.D))
        rates = self.rates(lengths, rate)
        if not kernel_cache_active():
            return self._generate(lengths, rates, triton)
        state = self._kernel_state()
        if state is None:
            return self._generate(lengths, rates, triton)
        key = (lengths, rates, triton)
        kernels = self._kernel_cache.get(state, key)
        if kernels is None:
            kernels = self._generate(lengths, rates, triton)
            self._kernel_cache.put(state, key, kernels)
        return list(kernels)

    def _generate(self, lengths: Tuple[int, ...], rates: Tuple[float, ...], triton: bool) -> List[Tensor]:
        """Generate the two-sided kernels. Axes whose kernels have the same family and size (diag: same taps; DPLR:
        same node count) are stacked along H and generated by one ``diag_taps`` / ``dplr_taps`` call."""
        taps = self.kernel_lengths(lengths, rates)
        if triton:
            w, log_step = zip(*[kern.discretize(r) for kern, r in zip(self.kernel, rates)])
            return axis_kernels_triton(w, log_step, lengths, taps, self.channels)
        groups = {}
        for i, (kern, t, r) in enumerate(zip(self.kernel, taps, rates)):
            if isinstance(kern, DiagAxisKernel):
                key = ('diag', kern.kernel_channels, t)
            elif isinstance(kern, DPLRAxisKernel):
                key = ('dplr', kern.kernel_channels, kern.nodes(t, r))
            else:  # any other axis-kernel module (e.g. frozen taps) is called on its own
                key = ('own', i, None)
            groups.setdefault(key, []).append(i)
        causal: List[Optional[Tensor]] = [None] * self.ndim
        for (family, _, size), axes in groups.items():
            if family == 'own' or len(axes) == 1:
                for i in axes:
                    causal[i] = self.kernel[i](taps[i], rates[i])
                continue
            if family == 'diag':
                w, s = zip(*[self.kernel[i].discretize(rates[i]) for i in axes])
                stacked = diag_taps(torch.cat(w, 1), torch.cat(s, 0), size)
            else:
                dt, lam, b, c, p = zip(*[self.kernel[i].cauchy_inputs(rates[i]) for i in axes])
                cat0 = [torch.cat(t, 0) for t in (dt, lam, b)]
                stacked = dplr_taps(*cat0, torch.cat(c, 1), torch.cat(p, 0), size, max(taps[i] for i in axes))
            for i, k in zip(axes, stacked.split(self.dim, dim=1)):
                causal[i] = k[..., :taps[i]]
        return [two_sided(k, n, self.channels, self.bidirectional) for k, n in zip(causal, lengths)]

    def _kernel_state(self) -> Optional[Tuple]:
        """Everything besides (lengths, rates) that the kernels depend on: l_max, each axis-kernel module and its
        settings, and each of its tensors' storage, version counter (bumped by every in-place update: optimizer
        steps, ``load_state_dict``, ``set_raw_c``), dtype and device. None (no caching) when a tensor was
        created under ``torch.inference_mode`` (inference tensors have no version counter)."""
        state = [self.l_max, self.channels, self.bidirectional]
        for kern in self.kernel:
            state.append((id(kern), type(kern), getattr(kern, 'bandlimit', None), getattr(kern, 'disc', None),
                          getattr(kern, '_l_kernel', None)))
            for m in kern.modules():  # their own dicts: cheaper per call than parameters() / buffers()
                for t in itertools.chain(m._parameters.values(), m._buffers.values()):
                    if t is None:
                        continue
                    if t.is_inference():  # made under inference_mode: no version counter, so never cached
                        return None
                    state.append((t.data_ptr(), t._version, t.dtype, t.device))
        return tuple(state)

    def clear_kernel_cache(self) -> None:
        """Drop the cached inference kernels (done automatically on every change the cache can see)."""
        self._kernel_cache.clear()

    def train(self, mode: bool = True):
        self._kernel_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._kernel_cache.clear()  # .to(), .half(), .cuda(), ...: new tensors
        return super()._apply(fn, *args, **kwargs)

    def _check_input(self, x: Tensor) -> None:
        """(B, dim, *spatial) (or channels-last) with B and every spatial length >= 1, else one ValueError."""
        axes = ('L',) if self.ndim == 1 else ('H', 'W') if self.ndim == 2 else ('T', 'H', 'W')
        if x.dim() == self.ndim + 2:
            feat = x.shape[1] if self.layout == 'channels_first' else x.shape[-1]
            if feat == self.dim:
                spatial = x.shape[2:] if self.layout == 'channels_first' else x.shape[1:-1]
                empty = [name for name, n in zip(('B',) + axes, (x.shape[0],) + tuple(spatial)) if n == 0]
                if not empty:
                    return
                raise ValueError(
                    f"S4ND(ndim={self.ndim}) got an input of shape {tuple(x.shape)} with no elements along "
                    f"{', '.join(empty)}; every axis needs length >= 1 (pass at least one sample, and images / "
                    f"clips of at least one pixel / frame per axis).")
        want = ('B', f'C={self.dim}') + axes if self.layout == 'channels_first' else ('B',) + axes + (f'C={self.dim}',)
        hint = ("Channels-last input? pass layout='channels_last'." if self.layout == 'channels_first'
                else "Channels-first input? pass layout='channels_first'.")
        raise ValueError(
            f"S4ND(ndim={self.ndim}, layout={self.layout!r}) expects ({', '.join(want)}); got {tuple(x.shape)}. "
            f"{hint} Other rank? set ndim (1, 2 or 3) to the number of spatial axes.")

    def convolve(self, x: Tensor, rate=None, layout: str = 'channels_first') -> Tensor:
        """The linear part (steps 1-3), in the given layout (default channels-first):
        (B, dim, *spatial) -> (B, channels*dim, *spatial), or (B, *spatial, dim) -> (B, *spatial, channels*dim).

        Kernel generation runs in float32 (float64 for float64 input) with autocast disabled, in Triton for
        backend='triton' in diag mode (``axis_kernels``), else in torch. The FFT
        path convolves in float32; the matmul and Triton paths multiply bf16/fp16 CUDA inputs in their
        dtype (fp32 accumulation), and under CUDA autocast cast float32 input to the autocast dtype.
        The result has the input's dtype.
        """
        device = x.device.type
        low = torch.get_autocast_dtype(device) if device == 'cuda' and torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            work = kernel_compute_dtype(x)
            spatial = x.shape[2:] if layout == 'channels_first' else x.shape[1:-1]
            shapes = [(self.channels, self.dim, 2 * n - 1) for n in spatial]  # the path is chosen from shapes
            if self.backend == 'auto':
                grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
                backend = select_backend(x, shapes, layout, grad=grad)
            else:
                backend = self.backend
            ks = self.axis_kernels(spatial, rate, backend=backend)
            u = x.to(low) if low is not None and x.dtype == torch.float32 and backend != 'fft' else x
            y = separable_conv(u, ks, self.D.to(work), backend=backend, layout=layout)
        return y.to(x.dtype)

    def forward(self, x: Tensor, rate=None) -> Tensor:
        """(B, dim, *spatial) -> same (channels-first); (B, *spatial, dim) -> same (channels-last)."""
        self._check_input(x)
        y = self.dropout(self.activation(self.convolve(x, rate, layout=self.layout)))
        if self.output_linear is None:
            return y
        y = self.output_linear(y if self.layout == 'channels_last' else y.movedim(1, -1))
        if self.postact == 'glu':
            y = F.glu(y, dim=-1)
        return y if self.layout == 'channels_last' else y.movedim(-1, 1)
