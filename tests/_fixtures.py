"""Tiny datasets written in the exact on-disk formats the training readers expect (generated, never downloaded).

- ``make_image_folder``: ImageNet layout, <root>/{train,val}/<class>/<name>.JPEG.
- ``make_cifar10``: <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, pickled dicts with
  'data' (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B, row-major), 'labels', 'batch_label', 'filenames'.
- ``make_hmdb51``: <root>/videos/<class>/<name>.avi (MPEG-4 in AVI, encoded with PyAV) and
  <root>/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt with '<name>.avi <0|1|2>' lines.
"""
import os
import pickle
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

CLASSES = ('brush_hair', 'cartwheel', 'catch')


def _pattern(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8: a class-dependent colour ramp plus noise, so tiny models can learn something."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * xx + label), np.cos(2 * yy + 2 * label), np.sin(xx + yy + 3 * label)], -1)
    img = 127.5 * (1 + base) + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: str, num_classes: int = 3, per_class: int = 4, size: int = 20, seed: int = 0) -> str:
    """ImageNet-style class folders of JPEGs for train/ and val/ (val gets half as many); returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', per_class), ('val', max(1, per_class // 2))):
        for c in range(num_classes):
            d = os.path.join(root, split, f'n{c:08d}')
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                Image.fromarray(_pattern(rng, c, size, size + 3)).save(os.path.join(d, f'img_{c}_{i}.JPEG'), quality=90)
    return root


def make_cifar10(root: str, per_batch: int = 8, test_size: int = 8, seed: int = 0) -> Dict[str, np.ndarray]:
    """CIFAR-10 python batches under root/cifar-10-batches-py; returns the arrays written (for exact checks)."""
    rng = np.random.default_rng(seed)
    d = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(d, exist_ok=True)
    written = {}
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    for name in names:
        n = test_size if name == 'test_batch' else per_batch
        labels = [int(v) for v in rng.integers(0, 10, n)]
        imgs = np.stack([_pattern(rng, y, 32, 32) for y in labels])  # (N, 32, 32, 3)
        data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)
        batch = {'batch_label': f'{name} of 6', 'labels': labels, 'data': data,
                 'filenames': [f'img_{name}_{i}.png' for i in range(n)]}
        with open(os.path.join(d, name), 'wb') as fh:
            pickle.dump(batch, fh, protocol=2)
        written[name] = imgs
        written[name + '_labels'] = np.array(labels)
    meta = {'num_cases_per_batch': per_batch, 'num_vis': 3072,
            'label_names': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']}
    with open(os.path.join(d, 'batches.meta'), 'wb') as fh:
        pickle.dump(meta, fh, protocol=2)
    return written


def write_video(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Encode (T, H, W, 3) uint8 frames as MPEG-4 in an AVI container with PyAV (H and W even)."""
    import av
    with av.open(path, mode='w') as container:
        stream = container.add_stream('mpeg4', rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = 'yuv420p'
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_hmdb51(root: str, classes: Sequence[str] = CLASSES, videos_per_class: int = 3, frames: int = 16,
                size=(24, 32), fps: int = 8, seed: int = 0) -> Dict[str, List[str]]:
    """HMDB-51-style videos and split files for folds 1-3; returns {'train': [...], 'test': [...]} of fold 1.

    Per class and fold: the first video is 'test' (2), the last 'unused' (0) when there are >= 3, the rest
    'train' (1); folds rotate which video is which. Video lengths vary (frames, frames + fps) to exercise clip
    sampling.
    """
    rng = np.random.default_rng(seed)
    split_dir = os.path.join(root, 'testTrainMulti_7030_splits')
    os.makedirs(split_dir, exist_ok=True)
    fold1 = {'train': [], 'test': []}
    for label, cls in enumerate(classes):
        vdir = os.path.join(root, 'videos', cls)
        os.makedirs(vdir, exist_ok=True)
        names = [f'{cls}_clip_{i}_f_cm_np1_fr_med_{i}.avi' for i in range(videos_per_class)]
        for i, name in enumerate(names):
            t = frames + (i % 2) * fps
            base = _pattern(rng, label, *size)
            video = np.stack([np.roll(base, shift=2 * k, axis=1) for k in range(t)])
            write_video(os.path.join(vdir, name), video, fps=fps)
        for fold in (1, 2, 3):
            codes = []
            for i in range(videos_per_class):
                j = (i + fold - 1) % videos_per_class
                codes.append(2 if j == 0 else 0 if (videos_per_class >= 3 and j == videos_per_class - 1) else 1)
            with open(os.path.join(split_dir, f'{cls}_test_split{fold}.txt'), 'w') as fh:
                fh.writelines(f'{name} {code} \n' for name, code in zip(names, codes))
            if fold == 1:
                for name, code in zip(names, codes):
                    if code in (1, 2):
                        fold1['train' if code == 1 else 'test'].append(f'{cls}/{name}')
    return fold1
