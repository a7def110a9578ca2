"""HMDB-51 from its released on-disk layout, decoded with PyAV through pytorchvideo.

As the S4ND reference's ``HMDB51`` data module (state-spaces/s4 ``src/dataloaders/videos.py``):
pytorchvideo ``Hmdb51`` with a 'random' clip sampler (train) / 'uniform' clip sampler (test) over
2-second clips, ``create_video_transform`` (uniform temporal subsample to ``num_frames``, optional
RandAugment, normalize, random short-side scale 256-320 + random crop + flip / short-side 256 + center
crop), split 1. Changes: a map-style dataset (the reference's iterable ``LabeledVideoDataset`` cannot be
sharded by a sampler, resumed mid-epoch, or report undecodable videos: it retries silently), our own
split-file parser with clear errors, RandAugment on uint8 frames (the reference ran it on float 0-255
frames, where torchvision's float ops clip at 1.0), scale and crop sizes proportional to ``img_size``
(256/224 and 320/224 of it), an optional temporal stride, and clip-level evaluation returning all
uniform clips of a test video at once.

Layout (``root``)::

    videos/<class>/<name>.avi                           51 class folders
    testTrainMulti_7030_splits/<class>_test_split<k>.txt  k = 1, 2, 3; lines '<name>.avi <0|1|2>'
                                                          (1 train, 2 test, 0 unused)

This module holds the one torchvision compatibility shim (``import_pytorchvideo``) and is the only place
that imports PyAV / pytorchvideo; both are imported lazily, so the rest of the package runs without them.
"""
import importlib
import io
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .data import load_or_skip

__all__ = ['HMDB51', 'import_pytorchvideo', 'find_hmdb51', 'hmdb51_classes', 'read_hmdb51_split', 'collate_video',
           'parse_video_randaug']

SPLIT_DIR_NAMES = ('testTrainMulti_7030_splits', 'test_train_splits')  # released name, reference's name
SPLIT_CODES = {'train': 1, 'test': 2, 'unused': 0}
# the reference's normalization (Kinetics statistics), here for frames scaled to [0, 1]
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


def import_pytorchvideo():
    """Import PyAV and pytorchvideo (data + transforms); returns the ``pytorchvideo`` module.

    pytorchvideo 0.1.5 imports ``torchvision.transforms.functional_tensor``, which torchvision >= 0.17
    renamed to ``_functional_tensor``; the old name is aliased before the import (the only shim).
    """
    try:
        importlib.import_module('av')  # the decoder pytorchvideo uses here
        importlib.import_module('pytorchvideo')
    except ImportError as e:
        raise ImportError(f"HMDB-51 needs PyAV and pytorchvideo ({e}). Install them with "
                          "`pip install av pytorchvideo`, or use another --dataset.") from e
    name = 'torchvision.transforms.functional_tensor'
    if name not in sys.modules:
        try:
            importlib.import_module(name)  # torchvision < 0.17
        except ImportError:
            sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script_method deprecation inside pytorchvideo
        warnings.simplefilter('ignore', UserWarning)
        for module in ('pytorchvideo.data', 'pytorchvideo.data.encoded_video_pyav', 'pytorchvideo.transforms'):
            importlib.import_module(module)
    return sys.modules['pytorchvideo']


def find_hmdb51(root: str) -> Tuple[str, str]:
    """(videos dir, split-files dir) under ``root``, or a ValueError saying what is missing."""
    if not os.path.isdir(root):
        raise ValueError(f"HMDB-51 root {root!r} does not exist or is not a directory. Expected it to contain "
                         f"videos/<class>/*.avi and {SPLIT_DIR_NAMES[0]}/; pass it with --data-dir.")
    video_dir = os.path.join(root, 'videos')
    split_dir = next((os.path.join(root, d) for d in SPLIT_DIR_NAMES if os.path.isdir(os.path.join(root, d))), None)
    missing = ([] if os.path.isdir(video_dir) else ['videos/']) + ([] if split_dir else [f'{SPLIT_DIR_NAMES[0]}/'])
    if missing:
        raise ValueError(f"HMDB-51 root {root!r} lacks {' and '.join(missing)} (found: {sorted(os.listdir(root))}). "
                         "Extract the per-class video archives into videos/<class>/ and the split archive "
                         f"test_train_splits.rar into {SPLIT_DIR_NAMES[0]}/.")
    return video_dir, split_dir


def hmdb51_classes(video_dir: str, split_dir: str, split_id: int) -> List[str]:
    """The sorted class folders of ``video_dir``, checked against the split files of fold ``split_id``.

    Every class folder needs its '<class>_test_split<k>.txt' and every such file its class folder; otherwise
    a ValueError names the missing ones (labels come from this list, so train and test always agree).
    """
    if split_id not in (1, 2, 3):
        raise ValueError(f"HMDB-51 split id must be 1, 2 or 3; got {split_id}")
    suffix = f'_test_split{split_id}.txt'
    files = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
    if not files:
        raise ValueError(f"no split files '*{suffix}' in {split_dir!r} (found {len(os.listdir(split_dir))} files). "
                         f"Expected 51 files like 'brush_hair{suffix}' from test_train_splits.rar.")
    classes = sorted(e.name for e in os.scandir(video_dir) if e.is_dir())
    with_split = {f[:-len(suffix)] for f in files}
    no_folder = sorted(with_split - set(classes))
    if no_folder:
        raise ValueError(f"{len(no_folder)} class folder(s) named in the split files are missing from "
                         f"{video_dir!r}: {no_folder[:5]}. Extract every per-class archive into videos/.")
    no_split = [c for c in classes if c not in with_split]
    if no_split:
        raise ValueError(f"{len(no_split)} class folder(s) in {video_dir!r} have no split file for split "
                         f"{split_id}: missing {[c + suffix for c in no_split[:5]]} in {split_dir!r}. Extract "
                         "all of test_train_splits.rar, or remove folders that are not HMDB-51 classes.")
    return classes


def read_hmdb51_split(video_dir: str, split_dir: str, split_id: int,
                      split: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Parse the split files of fold ``split_id`` for ``split`` ('train', 'test' or 'unused').

    Returns:
        classes (``hmdb51_classes``: sorted class folders), items [(relative path '<class>/<name>', label)]
        with label = the class's index in ``classes``.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"HMDB-51 split must be one of {sorted(SPLIT_CODES)}; got {split!r}")
    classes = hmdb51_classes(video_dir, split_dir, split_id)
    items = []
    for label, cls in enumerate(classes):
        path = os.path.join(split_dir, f'{cls}_test_split{split_id}.txt')
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in ('0', '1', '2'):
                    raise ValueError(f"{path}:{lineno}: expected '<video>.avi <0|1|2>'; got {line.strip()!r}")
                if int(fields[1]) == SPLIT_CODES[split]:
                    items.append((f'{cls}/{fields[0]}', label))
    return classes, items


def parse_video_randaug(aa: Optional[str]) -> Optional[Dict[str, float]]:
    """timm-style '--aa rand-m7-n1[-p0.5]' -> pytorchvideo RandAugment parameters (None: no RandAugment)."""
    if not aa:
        return None
    parts = aa.split('-')
    if parts[0] != 'rand':
        raise ValueError(f"video augmentation supports RandAugment only ('rand-m<magnitude>-n<layers>[-p<prob>]'); "
                         f"got --aa {aa!r}")
    keys = {'m': ('magnitude', int), 'n': ('num_layers', int), 'p': ('prob', float)}
    out = {}
    for part in parts[1:]:
        key = part[0]
        if key not in keys:
            raise ValueError(f"--aa {aa!r}: option {part!r} is not supported for video (use m, n, p)")
        name, cast = keys[key]
        out[name] = cast(part[1:])
    return out


def video_transform(is_training: bool, num_frames: int, img_size: int, auto_augment: Optional[str] = None,
                    hflip: float = 0.5):
    """pytorchvideo transform: uint8 (3, T_in, H_in, W_in) -> float (3, num_frames, img_size, img_size)."""
    ptv = import_pytorchvideo()
    randaug = parse_video_randaug(auto_augment) if is_training else None
    return ptv.transforms.create_video_transform(
        mode='train' if is_training else 'val', num_samples=num_frames, convert_to_float=True,
        video_mean=VIDEO_MEAN, video_std=VIDEO_STD,
        min_size=round(img_size * 256 / 224), max_size=round(img_size * 320 / 224), crop_size=img_size,
        horizontal_flip_prob=hflip, aug_type='randaug' if randaug else 'default', aug_paras=randaug)


def collate_video(batch: Sequence[tuple]) -> Tuple[Tensor, Tensor, List[str]]:
    """Training items -> ((B, 3, T, S, S), (B,), failures); evaluation items -> all clips stacked
    ((sum K, 3, T, S, S), labels repeated per clip, failures), undecodable videos dropped."""
    failures = [f for item in batch for f in item[2]]
    kept = [(x, y) for x, y, _ in batch if x is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), failures
    if kept[0][0].dim() == 4:
        return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]), failures
    x = torch.cat([x for x, _ in kept])
    y = torch.tensor([y for x, y in kept for _ in range(x.shape[0])])
    return x, y, failures


class HMDB51(Dataset):
    """HMDB-51 clips: item i -> (clip, label, failures); ``collate_fn`` is ``collate_video``.

    Training items are one random ``clip_duration`` clip of video i (pytorchvideo 'random' sampler);
    evaluation items are all consecutive clips of video i ('uniform' sampler), as the reference.
    A video that cannot be decoded is never fatal (``data.load_or_skip``): training moves on to the next
    video, evaluation drops it; each failure is returned as 'video <path>: <reason>' in ``failures`` for the
    loops to warn about and count. Labels are the indices of the sorted class folders (``hmdb51_classes``).

    Args:
        root: folder with videos/ and testTrainMulti_7030_splits/.
        split: 'train' or 'test'.
        split_id: fold 1, 2 or 3.
        num_frames: T, frames per clip (uniformly subsampled from the clip).
        clip_duration: clip length in seconds (reference: 2).
        frame_stride: if set, the clip spans num_frames * frame_stride source frames (overrides clip_duration).
        img_size: output height = width.
        is_training: random clip + augmentation; default split == 'train'.
        auto_augment: timm-style 'rand-m7-n1' for RandAugment (training only).
        hflip: horizontal flip probability (training only).

    Returns (per item):
        training: clip (3, T, S, S) float normalized, label int, failures list[str];
        evaluation: clips (K, 3, T, S, S) or None when undecodable, label, failures.
    """

    collate_fn = staticmethod(collate_video)

    def __init__(self, root: str, split: str = 'train', split_id: int = 1, num_frames: int = 16,
                 clip_duration: float = 2.0, frame_stride: Optional[int] = None, img_size: int = 224,
                 is_training: Optional[bool] = None, auto_augment: Optional[str] = None, hflip: float = 0.5):
        import_pytorchvideo()  # fail early, with the install hint, when PyAV / pytorchvideo are missing
        if split not in ('train', 'test'):
            raise ValueError(f"HMDB-51 split must be 'train' or 'test'; got {split!r}")
        if num_frames < 1 or clip_duration <= 0 or (frame_stride is not None and frame_stride < 1):
            raise ValueError(f"need num_frames >= 1, clip_duration > 0, frame_stride None or >= 1; got "
                             f"{num_frames}, {clip_duration}, {frame_stride}")
        self.video_dir, self.split_dir = find_hmdb51(root)
        self.classes, items = read_hmdb51_split(self.video_dir, self.split_dir, split_id, split)
        missing = [p for p, _ in items if not os.path.isfile(os.path.join(self.video_dir, p))]
        if missing:
            raise ValueError(f"{len(missing)} of {len(items)} {split} videos of split {split_id} are missing under "
                             f"{self.video_dir!r}, e.g. {missing[:3]}. Re-extract the class archives.")
        if not items:
            raise ValueError(f"split {split_id} has no {split} videos in {self.split_dir!r}")
        self.items, self.split, self.split_id = items, split, split_id
        self.num_frames, self.clip_duration, self.frame_stride, self.img_size = \
            num_frames, clip_duration, frame_stride, img_size
        self.is_training = split == 'train' if is_training is None else is_training
        self.auto_augment, self.hflip = auto_augment, hflip
        self._transform = None  # built lazily, in the worker that uses it

    def __len__(self) -> int:
        return len(self.items)

    def _clip_seconds(self, data: bytes) -> float:
        if self.frame_stride is None:
            return self.clip_duration
        import av
        with av.open(io.BytesIO(data)) as container:
            rate = container.streams.video[0].average_rate
        if not rate:
            raise RuntimeError("no frame rate in the stream header (needed for --frame-stride)")
        return self.num_frames * self.frame_stride / float(rate)

    def _decode(self, path: str) -> List[Tensor]:
        """Clips of one video as uint8 (3, T_in, H, W) tensors; raises on any decoding problem."""
        ptv = import_pytorchvideo()
        with open(path, 'rb') as fh:
            data = fh.read()
        seconds = self._clip_seconds(data)
        video = ptv.data.encoded_video_pyav.EncodedVideoPyAV(io.BytesIO(data), os.path.basename(path), False)
        try:
            duration = float(video.duration)
            sampler = ptv.data.make_clip_sampler('random' if self.is_training else 'uniform', seconds)
            clips, end, last = [], 0.0, False
            while not last:
                info = sampler(end, duration, {})
                clip = video.get_clip(info.clip_start_sec, info.clip_end_sec)['video']
                if clip is None:
                    raise RuntimeError(f"no frames decoded in [{float(info.clip_start_sec):.2f}, "
                                       f"{float(info.clip_end_sec):.2f}) s of a {duration:.2f} s video")
                clips.append(clip.round_().clamp_(0, 255).to(torch.uint8))
                end, last = info.clip_end_sec, info.is_last_clip
        finally:
            video.close()
        return clips

    def _load(self, index: int):
        rel, label = self.items[index]
        if self._transform is None:
            self._transform = video_transform(self.is_training, self.num_frames, self.img_size,
                                              self.auto_augment, self.hflip)
        clips = [self._transform(c) for c in self._decode(os.path.join(self.video_dir, rel))]
        return (clips[0] if self.is_training else torch.stack(clips)), label

    def __getitem__(self, index: int):
        return load_or_skip(self._load, index, len(self.items), self.is_training,
                            lambda i: 'video ' + os.path.join(self.video_dir, self.items[i][0]))
