"""Datasets and resumable loaders for ``s4nd-train`` / ``s4nd-validate``.

Datasets (``--dataset``), each read from its released on-disk format, never downloaded:
    imagenet   <data-dir>/{train,val}/<class>/*.JPEG (timm's folder reader; '' and 'folder' are aliases)
    cifar10    <data-dir>/cifar-10-batches-py/{data_batch_1..5,test_batch} (torchvision's pickle batches)
    hmdb51     <data-dir>/videos/<class>/*.avi + testTrainMulti_7030_splits/ (``video.py``)
    synthetic  no files, procedurally rendered (``synthetic.py``)
    torch/..., hfds/...   timm's other map-style sources, passed to ``timm.data.create_dataset``
Image transforms are timm's (``create_transform`` from ``resolve_data_config``); video transforms are
pytorchvideo's (``video.py``). CIFAR batches go through a restricted unpickler (nothing but plain values and
numpy arrays is built, so a crafted file cannot run code); an ImageNet image or HMDB-51 video that cannot be
read is skipped, named and counted (``load_or_skip``), never silently replaced.

Loaders are plain ``DataLoader``s over an ``EpochSampler`` rather than timm's ``create_loader``, which
cannot start an epoch part-way: the sampler gives a deterministic per-epoch order sharded over ranks and can
skip the samples already seen, and every sample carries a seed from (seed, epoch, position) with which
``SeededDataset`` seeds python/numpy/torch RNGs around ``dataset[i]``. Random augmentation is thereby a
function of the sample's place in the run, not of worker scheduling, so a run resumed mid-epoch sees
exactly the batches the uninterrupted run would have seen.
"""
import math
import os
import pickle
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate

__all__ = [
    'DATASETS', 'dataset_kind', 'default_splits', 'check_image_folder', 'CIFAR10Batches', 'ImageFolderItems',
    'load_or_skip', 'collate_with_failures', 'check_num_samples', 'create_dataset', 'dataset_classes',
    'train_transform', 'eval_transform', 'EpochSampler', 'SeededDataset', 'create_loader',
]

DATASETS = ('imagenet', 'cifar10', 'hmdb51', 'synthetic')
_ALIASES = {'': 'imagenet', 'folder': 'imagenet', 'imagenet': 'imagenet', 'cifar10': 'cifar10',
            'hmdb51': 'hmdb51', 'synthetic': 'synthetic'}
TIMM_SOURCES = ('torch/', 'hfds/', 'hfids/')
_SPLITS = {'imagenet': ('train', 'val'), 'cifar10': ('train', 'test'), 'hmdb51': ('train', 'test'),
           'synthetic': ('train', 'val'), 'timm': ('train', 'validation')}
CIFAR_FOLDER = 'cifar-10-batches-py'
CIFAR_TRAIN = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR_TEST = ('test_batch',)
CIFAR_CLASSES = 10
MAX_LOAD_TRIES = 10
_MASK64 = (1 << 64) - 1


def dataset_kind(name: str) -> str:
    """'imagenet' | 'cifar10' | 'hmdb51' | 'synthetic' | 'timm' for a --dataset value."""
    name = name.lower()
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith(TIMM_SOURCES):
        return 'timm'
    raise ValueError(f"unknown --dataset {name!r}; expected one of {DATASETS} or a timm map-style source "
                     f"({', '.join(p + '<name>' for p in TIMM_SOURCES)})")


def default_splits(name: str) -> Tuple[str, str]:
    """(train split, evaluation split) names used when --train-split / --val-split are not given."""
    return _SPLITS[dataset_kind(name)]


def _image_extensions() -> Tuple[str, ...]:
    from timm.data.readers.img_extensions import get_img_extensions
    return tuple(get_img_extensions(as_set=True))


def check_image_folder(root: Optional[str], split: str) -> str:
    """Validate <root>/<split>/<class>/<images> (timm's ImageNet layout); returns the split folder.

    Raises ValueError naming the problem: missing root or split folder, no class folders, class folders
    without images.
    """
    if not root or not os.path.isdir(root):
        raise ValueError(f"--data-dir {root!r} does not exist or is not a directory. For --dataset imagenet pass "
                         "the folder that holds train/ and val/ (one sub-folder of images per class).")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        raise ValueError(f"no {split!r} folder in {root!r} (sub-folders found: {found}). Expected "
                         f"{root}/{split}/<class>/<image>; choose the folder with --train-split / --val-split.")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise ValueError(f"{split_dir!r} has no class folders. Expected {split_dir}/<class>/<image>, one folder per "
                         "class (ImageNet: n01440764/, ...).")
    exts = _image_extensions()
    empty = [c for c in classes if not _has_image(os.path.join(split_dir, c), exts)]
    if empty:
        raise ValueError(f"{len(empty)} class folder(s) in {split_dir!r} contain no images "
                         f"({', '.join(sorted(exts))}): {empty[:5]}{' ...' if len(empty) > 5 else ''}. "
                         "Every class needs at least one image: add its images or remove the folder.")
    return split_dir


def _has_image(folder: str, exts: Tuple[str, ...]) -> bool:
    for _, _, files in os.walk(folder):
        if any(os.path.splitext(f)[1].lower() in exts for f in files):
            return True
    return False


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, str / bytes / numbers and numpy arrays / dtypes
    (through numpy's own reconstruct functions). Any other global is refused before it is created or
    called, so a crafted batch cannot run code."""

    def __init__(self, fh, path: str):
        super().__init__(fh, encoding='latin1')
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = _cifar_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"{self.path}: refused to unpickle {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                "strings, numbers and numpy arrays. The file is not the released cifar-10-python.tar.gz; "
                "re-extract it from a trusted copy.")
        return allowed[(module, name)]


def _cifar_globals() -> Dict[Tuple[str, str], object]:
    """(module, name) -> object for every global a numpy array pickle names (numpy 1 and 2 module paths)."""
    import codecs
    multiarray = getattr(np, '_core', None) or np.core
    reconstruct, scalar = multiarray.multiarray._reconstruct, multiarray.multiarray.scalar
    out = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype, ('_codecs', 'encode'): codecs.encode}
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out[(mod, '_reconstruct')], out[(mod, 'scalar')] = reconstruct, scalar
    return out


def _load_pickle(path: str) -> Dict[str, object]:
    """A CIFAR pickle (written by Python 2 or 3) with str keys, read with ``_CifarUnpickler``."""
    try:
        with open(path, 'rb') as fh:
            obj = _CifarUnpickler(fh, path).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith(path):
            raise ValueError(str(e)) from None
        raise ValueError(f"{path} is not a readable CIFAR pickle ({e}); re-extract cifar-10-python.tar.gz") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); re-extract "
                         "cifar-10-python.tar.gz") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}; expected a CIFAR batch dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


class CIFAR10Batches(Dataset):
    """CIFAR-10 from torchvision's python batches (the released cifar-10-python.tar.gz, extracted).

    The batches are read with a restricted unpickler (``_CifarUnpickler``): a file holding anything but
    plain values and numpy arrays is refused, naming the file, before any of it is built.

    Args:
        root: the folder holding cifar-10-batches-py/, or that folder itself.
        split: 'train' (data_batch_1..5) or 'test' (test_batch).
        transform: callable on a PIL image (timm's create_transform).
    Returns (per item): transform(PIL RGB 32x32 image), label int in 0..9.
    """

    def __init__(self, root: Optional[str], split: str = 'train', transform: Optional[Callable] = None):
        if split not in ('train', 'test'):
            raise ValueError(f"CIFAR-10 split must be 'train' or 'test'; got {split!r}")
        if not root or not os.path.isdir(root):
            raise ValueError(f"--data-dir {root!r} does not exist or is not a directory. For --dataset cifar10 pass "
                             f"the folder that holds {CIFAR_FOLDER}/ (extracted cifar-10-python.tar.gz).")
        folder = root if os.path.basename(os.path.normpath(root)) == CIFAR_FOLDER else os.path.join(root, CIFAR_FOLDER)
        names = CIFAR_TRAIN if split == 'train' else CIFAR_TEST
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            expected = f"{CIFAR_FOLDER}/{{{','.join(CIFAR_TRAIN + CIFAR_TEST)}}}"
            raise ValueError(f"CIFAR-10 batch file(s) {missing} not found in {folder!r}. Expected torchvision's "
                             f"format {expected} (the extracted cifar-10-python.tar.gz).")
        meta_path = os.path.join(folder, 'batches.meta')
        meta = _load_pickle(meta_path) if os.path.isfile(meta_path) else {}
        self.classes = [str(c) for c in meta.get('label_names', [])] or [str(i) for i in range(CIFAR_CLASSES)]
        data, labels = [], []
        for n in names:
            path = os.path.join(folder, n)
            batch = _load_pickle(path)
            if 'data' not in batch or not ('labels' in batch or 'fine_labels' in batch):
                raise ValueError(f"{path} is not a CIFAR-10 batch (keys {sorted(batch)}; expected 'data' and "
                                 "'labels').")
            arr = np.asarray(batch['data'], dtype=np.uint8)
            if arr.ndim != 2 or arr.shape[1] != 3072:
                raise ValueError(f"{path}: 'data' has shape {arr.shape}; expected (N, 3072) rows")
            batch_labels = [int(v) for v in batch.get('labels', batch.get('fine_labels'))]
            bad = [v for v in batch_labels if not 0 <= v < CIFAR_CLASSES]
            if bad or len(batch_labels) != arr.shape[0]:
                raise ValueError(f"{path}: {len(batch_labels)} labels for {arr.shape[0]} images"
                                 + (f", {len(bad)} outside 0..{CIFAR_CLASSES - 1} (e.g. {bad[0]})" if bad else '')
                                 + "; expected one label in 0..9 per image. Re-extract cifar-10-python.tar.gz.")
            data.append(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch_labels)
        self.data = np.concatenate(data)
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


def load_or_skip(load: Callable[[int], Tuple[object, int]], index: int, length: int, is_training: bool,
                 describe: Callable[[int], str]) -> Tuple[object, int, List[str]]:
    """``load(index)`` for a dataset whose files may be unreadable: item -> (x, label, failures).

    An item that fails to load is never fatal and never silent: training takes the next readable item in its
    place (up to MAX_LOAD_TRIES, so the batch keeps its size), evaluation returns x = None (the collate drops
    it); each failure is returned as '<describe(i)>: <reason>' for the loops to warn about and count.
    """
    failures = []
    for attempt in range(min(MAX_LOAD_TRIES, length) if is_training else 1):
        i = (index + attempt) % length
        try:
            x, label = load(i)
            return x, label, failures
        except Exception as e:  # any reading / decoding problem: record it, never stop the epoch
            failures.append(f"{describe(i)}: {type(e).__name__}: {e}")
    if is_training:
        raise RuntimeError(f"{len(failures)} consecutive items failed to load from index {index}: {failures}. "
                           "Check the files.")
    return None, -1, failures


def collate_with_failures(batch: Sequence[tuple]) -> Tuple[Tensor, Tensor, List[str]]:
    """Items (x or None, label, failures) -> (stacked x, labels, all failures), items with x None dropped."""
    failures = [f for item in batch for f in item[2]]
    kept = [(x, y) for x, y, _ in batch if x is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), failures
    x, y = default_collate(kept)
    return x, y, failures


class ImageFolderItems(Dataset):
    """Class-folder images (timm's folder reader) whose unreadable files are skipped, named and counted.

    Item i -> (transform(RGB image), label, failures) through ``load_or_skip``; ``collate_fn`` is
    ``collate_with_failures`` (``create_loader`` uses it).
    """
    collate_fn = staticmethod(collate_with_failures)

    def __init__(self, reader, transform: Optional[Callable], is_training: bool):
        self.reader, self.transform, self.is_training = reader, transform, is_training
        self.classes = [c for c, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])]

    def __len__(self) -> int:
        return len(self.reader)

    def _load(self, index: int):
        fh, label = self.reader[index]
        with fh:
            img = Image.open(fh).convert('RGB')  # convert decodes every pixel: a truncated file fails here
        return (self.transform(img) if self.transform is not None else img), label

    def __getitem__(self, index: int):
        return load_or_skip(self._load, index, len(self), self.is_training,
                            lambda i: 'image ' + self.reader.filename(i, absolute=True))


def train_transform(data_config: Dict, *, no_aug: bool = False, scale: Optional[Sequence[float]] = None,
                    ratio: Optional[Sequence[float]] = None, hflip: float = 0.5, vflip: float = 0.,
                    color_jitter: float = 0.4, auto_augment: Optional[str] = None, interpolation: str = 'random',
                    re_prob: float = 0., re_mode: str = 'pixel', re_count: int = 1, crop_pad: int = 0,
                    crop_mode: Optional[str] = None) -> Callable:
    """timm training transform for PIL images (arguments as ``timm.data.create_transform``'s); ``crop_pad=N``
    swaps timm's random resized crop for the CIFAR crop (pad N symmetric, random crop back) and keeps timm's
    other stages."""
    from timm.data import create_transform
    from torchvision import transforms
    kwargs = dict(
        input_size=data_config['input_size'], is_training=True, no_aug=no_aug, scale=scale, ratio=ratio,
        hflip=hflip, vflip=vflip, color_jitter=color_jitter, auto_augment=auto_augment, interpolation=interpolation,
        mean=data_config['mean'], std=data_config['std'], re_prob=re_prob, re_mode=re_mode, re_count=re_count)
    if not crop_pad or no_aug:
        return create_transform(train_crop_mode=crop_mode, **kwargs)
    _, secondary, final = create_transform(separate=True, **kwargs)
    size = data_config['input_size'][-2:]
    primary = [transforms.RandomCrop(size, padding=crop_pad, padding_mode='symmetric')]
    primary += [transforms.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    primary += [transforms.RandomVerticalFlip(vflip)] if vflip > 0 else []
    return transforms.Compose(primary + list(secondary.transforms) + list(final.transforms))


def eval_transform(data_config: Dict) -> Callable:
    """timm evaluation transform (resize, center crop by crop_pct, normalize) for PIL images."""
    from timm.data import create_transform
    return create_transform(
        input_size=data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'))


def check_num_samples(num_samples: Optional[int]) -> None:
    """ValueError unless ``num_samples`` is None (the default size) or a positive count."""
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples {num_samples} (--train-num-samples / --val-num-samples / --num-samples): "
                         "expected a positive number of samples; leave the flag out for the default size")


def create_dataset(name: str, split: str, is_training: bool, data_config: Dict, *, data_dir: Optional[str] = None,
                   seed: int = 0, num_classes: Optional[int] = None, num_samples: Optional[int] = None,
                   num_frames: Optional[int] = None, clip_duration: float = 2.0, frame_stride: Optional[int] = None,
                   hmdb_split: int = 1, augment: Optional[Dict] = None, class_map: Optional[Dict] = None,
                   download: bool = False):
    """The dataset ``name`` (a --dataset value) for ``split`` with its transform.

    Args:
        data_config: timm's resolved data config (input_size, mean, std, interpolation, crop_pct).
        num_classes, num_samples: synthetic only (defaults 10 classes, 5000 train / 1000 eval samples).
        num_frames: hmdb51 frames per clip (default 16); with synthetic, renders clips.
        clip_duration, frame_stride, hmdb_split: hmdb51 clip length (s), temporal stride, fold.
        augment: ``train_transform`` keyword arguments when ``is_training`` (None: its defaults);
            hmdb51 reads its auto_augment and hflip.
        class_map: imagenet class name -> index (so evaluation uses the training set's indices).
        download: timm sources only.
    Returns a map-style dataset whose items are (x, label) or, for hmdb51 and imagenet folders,
    (x, label, failures) with a ``collate_fn`` attribute that drops unreadable items.
    """
    kind = dataset_kind(name)
    augment = dict(augment or {}) if is_training else {}
    if kind == 'synthetic':
        from torchvision.transforms import Normalize

        from .synthetic import SyntheticShapes
        check_num_samples(num_samples)
        return SyntheticShapes(
            num_samples or (5000 if is_training else 1000), data_config['input_size'][-2:],
            num_classes=num_classes or 10, seed=seed, split=split, in_chans=data_config['input_size'][0],
            num_frames=num_frames, transform=Normalize(data_config['mean'], data_config['std']))
    if kind == 'hmdb51':
        from .video import HMDB51
        return HMDB51(data_dir, split=split, split_id=hmdb_split, num_frames=num_frames or 16,
                      clip_duration=clip_duration, frame_stride=frame_stride, img_size=data_config['input_size'][-1],
                      is_training=is_training, auto_augment=augment.get('auto_augment'),
                      hflip=augment.get('hflip', 0.5))
    transform = train_transform(data_config, **augment) if is_training else eval_transform(data_config)
    if kind == 'cifar10':
        return CIFAR10Batches(data_dir, split, transform)
    from timm.data import create_dataset as timm_create_dataset
    if kind == 'imagenet':
        check_image_folder(data_dir, split)
        ds = timm_create_dataset('', root=data_dir, split=split, search_split=True, class_map=class_map,
                                 is_training=is_training)
        return ImageFolderItems(ds.reader, transform, is_training)
    ds = timm_create_dataset(name, root=data_dir, split=split, is_training=is_training, download=download)
    if isinstance(ds, IterableDataset):
        raise ValueError(f"--dataset {name!r} is an iterable source; s4nd-train needs a map-style dataset "
                         "(random access, for resumable sharded sampling): use a folder, torch/ or hfds/ source.")
    ds.transform = transform
    return ds


def dataset_classes(ds) -> List[str]:
    """Class names of a dataset built by ``create_dataset`` (index order)."""
    if hasattr(ds, 'classes'):
        return list(ds.classes)
    class_to_idx = getattr(getattr(ds, 'reader', None), 'class_to_idx', {})  # timm ImageDataset
    return [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]


def _mix64(x: int) -> int:
    """splitmix64 finalizer: decorrelates nearby integers."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


class EpochSampler(Sampler):
    """Deterministic per-epoch order, sharded over ranks, startable part-way; yields (index, sample_seed).

    The epoch's global order is a permutation seeded by (seed, epoch) (or 0..N-1 without shuffle), each index
    repeated ``repeats`` times in a row (repeated augmentation: the copies land on different ranks), then
    padded by wrapping so that every rank gets ``ceil(N / world_size)`` samples (``pad``; evaluation uses
    ``pad=False``: rank r gets positions r, r + world, ... with no duplicates). Rank r takes every
    world-th position. The seed of a sample depends on (seed, epoch, global position) only.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeats: int = 1, pad: bool = True):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.repeats, self.pad = rank, world_size, max(1, int(repeats)), pad
        self.epoch, self.start = 0, 0

    @property
    def samples_per_rank(self) -> int:
        """Samples rank ``rank`` draws in a full epoch."""
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples of this rank (for resuming)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.samples_per_rank - self.start)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(_mix64(self.seed * 1_000_003 + self.epoch))
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        total = self.samples_per_rank * self.world_size if self.pad else self.num_samples
        if total > len(order):
            order = order.repeat(math.ceil(total / len(order)))
        positions = range(self.rank, total, self.world_size)[self.start:]
        base = _mix64(_mix64(self.seed) + self.epoch)
        for pos in positions:
            yield int(order[pos]), _mix64(base + pos)


class SeededDataset(Dataset):
    """Wraps a dataset; item (index, seed) -> dataset[index] computed with python ``random``, numpy's global
    RNG and torch's CPU RNG seeded by ``seed`` (states restored afterwards, so the caller's RNGs are untouched)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


def create_loader(dataset: Dataset, batch_size: int, is_training: bool, seed: int, rank: int = 0,
                  world_size: int = 1, repeats: int = 1, num_workers: int = 0, pin_memory: bool = False,
                  collate_fn: Optional[Callable] = None) -> DataLoader:
    """DataLoader over ``SeededDataset(dataset)`` with an ``EpochSampler`` (``loader.sampler``).

    Training: shuffled, padded to equal per-rank length, last partial batch dropped (ranks stay in lockstep).
    Evaluation: in order, each sample on exactly one rank, all batches kept.
    ``collate_fn`` defaults to the dataset's own (``dataset.collate_fn``: the ones that drop unreadable items),
    else torch's default. Call ``loader.sampler.set_epoch(epoch, start)`` before iterating. The loader has its own generator, so
    starting an iteration never draws from the global torch RNG (a resumed run's RNG stream stays aligned).
    """
    sampler = EpochSampler(len(dataset), shuffle=is_training, seed=seed, rank=rank, world_size=world_size,
                           repeats=repeats if is_training else 1, pad=is_training)
    if is_training and sampler.samples_per_rank < batch_size:
        raise ValueError(f"the training set has {len(dataset)} samples, {sampler.samples_per_rank} per rank: fewer "
                         f"than one batch of {batch_size}. Lower -b/--batch-size or use more data.")
    return DataLoader(
        SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn or getattr(dataset, 'collate_fn', None) or default_collate, pin_memory=pin_memory, drop_last=is_training,
        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
