"""Dataset readers on fixtures written in the real formats (tests/_fixtures.py), their errors, the samplers."""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _fixtures import make_cifar10, make_hmdb51, make_image_folder
from s4nd_timm.train.data import (
    CIFAR10Batches,
    EpochSampler,
    SeededDataset,
    check_image_folder,
    create_dataset,
    create_loader,
    dataset_classes,
)
from s4nd_timm.train.synthetic import SyntheticShapes

DATA_CONFIG = {'input_size': (3, 16, 16), 'interpolation': 'bilinear', 'mean': (0.5, 0.5, 0.5),
               'std': (0.5, 0.5, 0.5), 'crop_pct': 1.0, 'crop_mode': 'center'}


@pytest.fixture(scope='module')
def hmdb_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('hmdb51'))
    return root, make_hmdb51(root)


# --- synthetic -----------------------------------------------------------------------------------------

def test_synthetic_deterministic_by_seed_split_index():
    a, b = SyntheticShapes(20, 16, seed=3), SyntheticShapes(20, 16, seed=3)
    for i in (0, 7, 19):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] == i % 10
    assert not torch.equal(a[0][0], SyntheticShapes(20, 16, seed=4)[0][0])
    assert not torch.equal(a[0][0], SyntheticShapes(20, 16, seed=3, split='val')[0][0])
    x = a[5][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize('sizes', [(16, 64), (8, 32)])
def test_synthetic_renders_same_sample_at_any_resolution(sizes):
    """Each pixel is the cell average of one continuous image: area-pooling the fine render gives the coarse one."""
    lo, hi = sizes
    ds = SyntheticShapes(30, lo, num_classes=15)
    for i in range(15):
        pooled = F.avg_pool2d(ds.render(i, hi)[None], hi // lo)[0]
        assert (pooled - ds.render(i, lo)).abs().max() < 0.08, (i, ds.class_name(i))
        assert (pooled - ds.render(i, lo)).abs().mean() < 0.01


def test_synthetic_classes_clips_and_errors():
    ds = SyntheticShapes(30, (12, 20), num_classes=15, in_chans=1)
    assert ds[0][0].shape == (1, 12, 20) and len(set(ds.classes)) == 15
    clip = SyntheticShapes(4, 16, num_frames=5)[1][0]
    assert clip.shape == (3, 5, 16, 16) and not torch.equal(clip[:, 0], clip[:, -1])  # the shape moves
    with pytest.raises(ValueError, match='num_classes must be in 1..15'):
        SyntheticShapes(10, 16, num_classes=16)
    with pytest.raises(ValueError, match='split must be one of'):
        SyntheticShapes(10, 16, split='validation')


# --- ImageNet folders ----------------------------------------------------------------------------------

def test_image_folder_reader(tmp_path):
    root = make_image_folder(str(tmp_path), num_classes=3, per_class=4)
    train = create_dataset('imagenet', 'train', True, DATA_CONFIG, data_dir=root)
    val = create_dataset('imagenet', 'val', False, DATA_CONFIG, data_dir=root)
    assert len(train) == 12 and len(val) == 6
    assert dataset_classes(train) == dataset_classes(val) == [f'n{c:08d}' for c in range(3)]
    x, y, failures = val[5]
    assert x.shape == (3, 16, 16) and y == 2 and failures == []
    assert sorted({train[i][1] for i in range(len(train))}) == [0, 1, 2]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        check_image_folder(str(tmp_path / 'nope'), 'train')
    root = make_image_folder(str(tmp_path / 'in'), num_classes=2, per_class=2)
    with pytest.raises(ValueError, match=r"no 'validation' folder .*sub-folders found: \['train', 'val'\]"):
        check_image_folder(root, 'validation')
    os.makedirs(os.path.join(root, 'train', 'n_empty_class'))
    with open(os.path.join(root, 'train', 'n_empty_class', 'notes.txt'), 'w') as fh:
        fh.write('not an image')
    with pytest.raises(ValueError, match=r"1 class folder\(s\) .* contain no images .*n_empty_class"):
        create_dataset('imagenet', 'train', True, DATA_CONFIG, data_dir=root)
    os.makedirs(str(tmp_path / 'flat' / 'train'))
    with pytest.raises(ValueError, match='has no class folders'):
        check_image_folder(str(tmp_path / 'flat'), 'train')


# --- CIFAR-10 ------------------------------------------------------------------------------------------

def test_cifar10_reader_exact_pixels(tmp_path):
    written = make_cifar10(str(tmp_path), per_batch=8, test_size=6)
    train = CIFAR10Batches(str(tmp_path), 'train')
    test = CIFAR10Batches(os.path.join(str(tmp_path), 'cifar-10-batches-py'), 'test')
    assert len(train) == 40 and len(test) == 6 and train.classes[3] == 'cat'
    img, label = train[8 + 3]  # data_batch_2, row 3
    assert np.array_equal(np.asarray(img), written['data_batch_2'][3]) and label == written['data_batch_2_labels'][3]
    img, label = test[5]
    assert np.array_equal(np.asarray(img), written['test_batch'][5]) and label == written['test_batch_labels'][5]
    x, _ = create_dataset('cifar10', 'train', True, dict(DATA_CONFIG, input_size=(3, 32, 32)), data_dir=str(tmp_path),
                          augment=dict(crop_pad=4))[0]
    assert x.shape == (3, 32, 32)


def test_cifar10_errors(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        CIFAR10Batches(str(tmp_path / 'nope'))
    make_cifar10(str(tmp_path))
    os.remove(os.path.join(str(tmp_path), 'cifar-10-batches-py', 'data_batch_4'))
    with pytest.raises(ValueError, match=r"\['data_batch_4'\] not found"):
        CIFAR10Batches(str(tmp_path), 'train')
    with open(os.path.join(str(tmp_path), 'cifar-10-batches-py', 'test_batch'), 'wb') as fh:
        fh.write(b'\x00garbage')
    with pytest.raises(ValueError, match='not a readable CIFAR pickle'):
        CIFAR10Batches(str(tmp_path), 'test')


# --- HMDB-51 -------------------------------------------------------------------------------------------

def test_hmdb51_reader(hmdb_root):
    from s4nd_timm.train.video import HMDB51, collate_video
    root, fold1 = hmdb_root
    train = HMDB51(root, 'train', split_id=1, num_frames=4, img_size=16)
    test = HMDB51(root, 'test', split_id=1, num_frames=4, img_size=16)
    assert [p for p, _ in train.items] == fold1['train'] and [p for p, _ in test.items] == fold1['test']
    assert train.classes == ['brush_hair', 'cartwheel', 'catch'] and [y for _, y in test.items] == [0, 1, 2]
    clip, label, failures = train[1]
    assert clip.shape == (3, 4, 16, 16) and label == 1 and failures == []
    x, y, failures = collate_video([test[i] for i in range(len(test))])
    assert x.shape[1:] == (3, 4, 16, 16) and x.shape[0] == y.shape[0] >= 3 and failures == []
    fold2 = HMDB51(root, 'train', split_id=2, num_frames=4, img_size=16)
    assert [p for p, _ in fold2.items] != [p for p, _ in train.items]
    stride = HMDB51(root, 'train', split_id=1, num_frames=4, frame_stride=2, img_size=16, auto_augment='rand-m7-n1')
    assert stride[0][0].shape == (3, 4, 16, 16)


def test_hmdb51_errors(tmp_path):
    from s4nd_timm.train.video import HMDB51
    with pytest.raises(ValueError, match='does not exist'):
        HMDB51(str(tmp_path / 'nope'))
    root = str(tmp_path / 'h')
    make_hmdb51(root, videos_per_class=2)
    with pytest.raises(ValueError, match='split id must be 1, 2 or 3'):
        HMDB51(root, split_id=4)
    for f in os.listdir(os.path.join(root, 'testTrainMulti_7030_splits')):
        if f.endswith('_test_split2.txt'):
            os.remove(os.path.join(root, 'testTrainMulti_7030_splits', f))
    with pytest.raises(ValueError, match=r"no split files '\*_test_split2.txt'"):
        HMDB51(root, split_id=2)
    os.remove(os.path.join(root, 'videos', 'catch', os.listdir(os.path.join(root, 'videos', 'catch'))[0]))
    with pytest.raises(ValueError, match='videos of split 1 are missing'):
        HMDB51(root, split_id=1, split='test')
    os.rename(os.path.join(root, 'testTrainMulti_7030_splits'), os.path.join(root, 'splits'))
    with pytest.raises(ValueError, match='lacks testTrainMulti_7030_splits/'):
        HMDB51(root)


def test_hmdb51_corrupt_video_is_skipped_and_reported(tmp_path):
    from s4nd_timm.train.video import HMDB51, collate_video
    root = str(tmp_path)
    fold1 = make_hmdb51(root)
    bad = fold1['train'][1]
    with open(os.path.join(root, 'videos', bad), 'wb') as fh:
        fh.write(b'not a video' * 50)
    train = HMDB51(root, 'train', num_frames=4, img_size=16)
    clip, label, failures = train[1]  # the corrupt one: replaced by the next video, failure reported
    assert clip.shape == (3, 4, 16, 16) and label == 2
    assert len(failures) == 1 and bad in failures[0] and 'Failed to open video' in failures[0]
    test_bad = fold1['test'][0]
    with open(os.path.join(root, 'videos', test_bad), 'wb') as fh:
        fh.write(b'\x00' * 100)
    test = HMDB51(root, 'test', num_frames=4, img_size=16)
    _, y, failures = collate_video([test[i] for i in range(len(test))])
    assert 0 not in y.tolist() and len(failures) == 1 and test_bad in failures[0]


# --- samplers and seeding ------------------------------------------------------------------------------

def test_epoch_sampler_resume_and_shards():
    full = list(EpochSampler(10, shuffle=True, seed=1))
    s = EpochSampler(10, shuffle=True, seed=1)
    s.set_epoch(0, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    ranks = [list(EpochSampler(10, True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)
    assert {i for r in ranks for i, _ in r} == set(range(10))
    evals = [list(EpochSampler(10, False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(i for r in evals for i, _ in r) == list(range(10))
    rep = [i for i, _ in EpochSampler(6, True, seed=0, repeats=3)]
    assert len(rep) == 6 and rep[0] == rep[1] == rep[2]


class _RandomDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([i, random.random(), np.random.rand(), torch.rand(()).item()], dtype=torch.float64), i


def test_seeded_samples_independent_of_workers_and_rng():
    state = torch.get_rng_state()
    batches = []
    for workers in (0, 2):
        loader = create_loader(_RandomDataset(), 4, True, seed=5, num_workers=workers)
        loader.sampler.set_epoch(3)
        batches.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(batches[0], batches[1])
    assert torch.equal(state, torch.get_rng_state())
    seeded = SeededDataset(_RandomDataset())
    assert torch.equal(seeded[(2, 7)][0], seeded[(2, 7)][0]) and not torch.equal(seeded[(2, 7)][0], seeded[(2, 8)][0])
