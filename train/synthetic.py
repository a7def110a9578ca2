"""Embedded synthetic dataset: procedurally rendered shapes and textures at any resolution, no files.

No counterpart in the S4ND reference. Purpose: demos, CI tests and the
resolution experiments (docs/design.md §5) without downloads. Every sample is a *continuous* image, a function of
(x, y) in the unit square given by a handful of real parameters drawn deterministically from
(seed, split, index); ``render`` integrates that function over each pixel cell (box-filter antialiasing
by supersampling), so the same sample can be rendered at 8, 16, 32 or 64 px and the low-resolution
images are (up to the supersampling error) area-downsampled versions of the high-resolution ones.

Classes: class c is the pair (shape SHAPES[c % 5], texture TEXTURES[(c // 5) % 3]), so up to 15 classes;
the default 10 classes are the 5 shapes, each flat or striped. Nuisance parameters, all continuous:
position, size, aspect, rotation, colours, background gradient, texture frequency, orientation, phase.
Labels are balanced: label = index % num_classes.

Example::

    ds = SyntheticShapes(num_samples=1000, img_size=32, num_classes=10, seed=0, split='train')
    x, y = ds[3]                      # x: (3, 32, 32) float32 in [0, 1], y: int
    x8, x64 = ds.render(3, 8), ds.render(3, 64)   # the same sample at other resolutions
    clip = SyntheticShapes(8, 32, num_frames=6)[0][0]   # (3, 6, 32, 32): the shape moves and turns
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from timm.layers import to_2tuple
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ['SyntheticShapes', 'SHAPES', 'TEXTURES']

SHAPES = ('disk', 'square', 'triangle', 'ring', 'cross')
TEXTURES = ('flat', 'stripes', 'checker')
SPLITS = ('train', 'val', 'test')
_SQRT3 = math.sqrt(3.0)


def _signed_distance(shape: str, x: Tensor, y: Tensor) -> Tensor:
    """Signed distance-like field of a unit-size shape centred at 0 (< 0 inside), any broadcastable x, y."""
    if shape == 'disk':
        return torch.hypot(x, y) - 1.0
    if shape == 'square':
        return torch.maximum(x.abs(), y.abs()) - 0.85
    if shape == 'triangle':  # equilateral, circumradius 1, apex up (image y grows downwards)
        edges = (y - 0.5, 0.5 * _SQRT3 * x - 0.5 * y - 0.5, -0.5 * _SQRT3 * x - 0.5 * y - 0.5)
        return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])
    if shape == 'ring':
        return (torch.hypot(x, y) - 0.72).abs() - 0.28
    if shape == 'cross':
        bar_h = torch.maximum(x.abs() - 1.0, y.abs() - 0.32)
        bar_v = torch.maximum(x.abs() - 0.32, y.abs() - 1.0)
        return torch.minimum(bar_h, bar_v)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(texture: str, u: Tensor, v: Tensor) -> Tensor:
    """Texture intensity in [0, 1] from object-frame phases u, v (radians); smooth, so band-limited."""
    if texture == 'flat':
        return torch.ones_like(u)
    if texture == 'stripes':
        return 0.5 + 0.5 * torch.sin(u)
    if texture == 'checker':
        return 0.5 + 0.5 * torch.sin(u) * torch.sin(v)
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def _size_hw(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """An int or (H, W) -> (H, W), both >= 1."""
    size = tuple(int(s) for s in to_2tuple(img_size))
    h, w = size if len(size) == 2 else (0, 0)
    if h < 1 or w < 1:
        raise ValueError(f"img_size must be a positive int or (H, W); got {img_size}")
    return h, w


class SyntheticShapes(Dataset):
    """Deterministic procedural shapes dataset; item i -> (image, label).

    Args:
        num_samples: dataset length.
        img_size: render size, an int (square) or (H, W); ``render`` takes any other size.
        num_classes: 1..15, see the module docstring for the class -> (shape, texture) map.
        seed: base seed; with ``split`` and the index it fully determines a sample.
        split: 'train', 'val' or 'test' (independent streams of samples).
        in_chans: 3 (RGB) or 1 (luminance).
        num_frames: None for images; T for clips in which the shape moves, turns and its texture drifts.
        supersample: sub-samples per pixel side; None = max(4, ceil(128 / min(H, W))).
        transform: optional callable applied to the rendered tensor (e.g. normalization).

    Returns (per item):
        image (in_chans, H, W) or clip (in_chans, T, H, W), float32 in [0, 1] before ``transform``;
        label int in [0, num_classes).
    """

    def __init__(
            self,
            num_samples: int,
            img_size: Union[int, Sequence[int]],
            num_classes: int = 10,
            seed: int = 0,
            split: str = 'train',
            in_chans: int = 3,
            num_frames: Optional[int] = None,
            supersample: Optional[int] = None,
            transform: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        max_classes = len(SHAPES) * len(TEXTURES)
        if not 1 <= num_classes <= max_classes:
            raise ValueError(f"num_classes must be in 1..{max_classes} ({len(SHAPES)} shapes x {len(TEXTURES)} "
                             f"textures); got {num_classes}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3; got {in_chans}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be None (images) or >= 1; got {num_frames}")
        self.num_samples, self.num_classes, self.seed, self.split = num_samples, num_classes, seed, split
        self.img_size = _size_hw(img_size)
        self.in_chans, self.num_frames, self.supersample, self.transform = in_chans, num_frames, supersample, transform
        self.classes = [self.class_name(c) for c in range(num_classes)]

    @staticmethod
    def class_name(label: int) -> str:
        """'<shape>_<texture>' for a label."""
        return f"{SHAPES[label % len(SHAPES)]}_{TEXTURES[(label // len(SHAPES)) % len(TEXTURES)]}"

    def __len__(self) -> int:
        return self.num_samples

    def params(self, index: int) -> Dict[str, object]:
        """The continuous parameters of sample ``index`` (deterministic in seed, split, index)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        label = index % self.num_classes
        light = rng.random() < 0.5  # light shape on dark background or the reverse
        fg = rng.uniform(0.6, 1.0, 3) if light else rng.uniform(0.0, 0.4, 3)
        bg0, bg1 = (rng.uniform(0.0, 0.4, 3), rng.uniform(0.0, 0.4, 3)) if light else \
            (rng.uniform(0.6, 1.0, 3), rng.uniform(0.6, 1.0, 3))
        return dict(
            label=label, shape=SHAPES[label % len(SHAPES)], texture=TEXTURES[(label // len(SHAPES)) % len(TEXTURES)],
            center=rng.uniform(0.35, 0.65, 2), radius=rng.uniform(0.2, 0.32), aspect=rng.uniform(0.8, 1.25),
            angle=rng.uniform(0.0, 2 * math.pi), fg=fg, bg0=bg0, bg1=bg1, bg_angle=rng.uniform(0.0, 2 * math.pi),
            tex_freq=rng.uniform(2.0, 3.5), tex_angle=rng.uniform(0.0, math.pi),
            tex_phase=rng.uniform(0.0, 2 * math.pi),
            velocity=rng.uniform(-0.15, 0.15, 2), spin=rng.uniform(-0.6, 0.6), drift=rng.uniform(-2.0, 2.0),
        )

    def render(self, index: int, img_size: Union[None, int, Sequence[int]] = None) -> Tensor:
        """Sample ``index`` rendered at ``img_size`` (default: the dataset's), before ``transform``.

        Returns:
            (in_chans, H, W), or (in_chans, T, H, W) when num_frames is set; float32 in [0, 1].
        """
        p = self.params(index)
        h, w = self.img_size if img_size is None else _size_hw(img_size)
        ss = self.supersample or max(4, math.ceil(128 / min(h, w)))
        # sub-sample positions in the unit square, (H*ss, 1) and (1, W*ss)
        ys = ((torch.arange(h * ss, dtype=torch.float64) + 0.5) / (h * ss)).unsqueeze(1)
        xs = ((torch.arange(w * ss, dtype=torch.float64) + 0.5) / (w * ss)).unsqueeze(0)
        times = [0.0] if self.num_frames is None else np.linspace(-0.5, 0.5, self.num_frames)
        frames = [self._frame(p, xs, ys, t, h, w, ss) for t in times]
        out = frames[0] if self.num_frames is None else torch.stack(frames, dim=1)
        return out.float()

    def _frame(self, p: Dict, xs: Tensor, ys: Tensor, t: float, h: int, w: int, ss: int) -> Tensor:
        cx, cy = p['center'] + p['velocity'] * t
        angle = p['angle'] + p['spin'] * t
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        dx, dy = xs - cx, ys - cy
        # object frame: rotate, then scale by radius (x stretched by aspect)
        ox = (cos_a * dx + sin_a * dy) / (p['radius'] * p['aspect'])
        oy = (-sin_a * dx + cos_a * dy) / p['radius']
        inside = (_signed_distance(p['shape'], ox, oy) < 0).to(torch.float64)
        ta, phase = p['tex_angle'], p['tex_phase'] + p['drift'] * t
        u = math.pi * p['tex_freq'] * (math.cos(ta) * ox + math.sin(ta) * oy) + phase
        v = math.pi * p['tex_freq'] * (-math.sin(ta) * ox + math.cos(ta) * oy)
        shade = 0.35 + 0.65 * _texture(p['texture'], u, v)  # (H*ss, W*ss)
        along = math.cos(p['bg_angle']) * (2 * xs - 1) + math.sin(p['bg_angle']) * (2 * ys - 1)
        ramp = 0.5 + 0.5 * along / math.sqrt(2)
        fg = torch.as_tensor(p['fg']).view(3, 1, 1)
        bg = torch.as_tensor(p['bg0']).view(3, 1, 1) * (1 - ramp) + torch.as_tensor(p['bg1']).view(3, 1, 1) * ramp
        img = bg + inside * (fg * shade - bg)  # (3, H*ss, W*ss)
        img = img.view(3, h, ss, w, ss).mean(dim=(2, 4))  # box filter = average over each pixel cell
        if self.in_chans == 1:
            img = (img * torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)).sum(0, keepdim=True)
        return img.clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        x = self.render(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, index % self.num_classes
