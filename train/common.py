"""What the commands share: flag parsing helpers, device and autocast, class counts, data config, building a
model from a name / checkpoint / kwargs, and reading checkpoints safely.

``s4nd-train`` (``train.py``), ``s4nd-validate`` (``validate.py``) and ``s4nd-eval-resolution`` import these;
none of them imports another command. Errors a user can fix are ``ValueError``s that name the flag or the
file (``engine.run_cli`` prints them as one line).
"""
import argparse
import json
import os
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from s4nd_timm._io import safe_torch_load

from .data import check_image_folder, dataset_kind

__all__ = ['ArgumentParser', 'ModelKwargs', 'resolve_device', 'amp_autocast', 'dataset_num_classes', 'check_in_chans',
           'resolve_img_size', 'build_model', 'read_checkpoint', 'load_weights', 'model_data_config',
           'set_channels_last', 'check_positive', 'check_writable']

RGB_DATASETS = ('imagenet', 'cifar10', 'hmdb51')


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a flag error printed as one line ``<prog>: error: <message>`` (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


class ModelKwargs(argparse.Action):
    """``--model-kwargs key=value ...`` -> dict through timm's ``ParseKwargs`` (values as Python literals,
    else strings), refusing an item without '=' with a message that names it."""

    def __call__(self, parser, namespace, values, option_string=None):
        from timm.utils import ParseKwargs
        bad = [v for v in values if v and '=' not in v]
        if bad:
            raise argparse.ArgumentError(self, f"expected key=value items (e.g. d_model=64); got {bad[0]!r}")
        ParseKwargs(self.option_strings, self.dest)(parser, namespace, values, option_string)


def resolve_device(name: str) -> torch.device:
    """``--device`` value -> torch.device; ValueError for an unknown name or CUDA without a GPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name; use cpu or cuda (cuda:N)") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda}); use --device cpu")
    return device


def amp_autocast(device: torch.device, enabled: bool, dtype: str = 'float16') -> Callable:
    """Context factory: ``torch.autocast`` in ``dtype`` ('float16' / 'bfloat16') when ``enabled``, else a no-op."""
    if not enabled:
        return nullcontext
    return partial(torch.autocast, device_type=device.type,
                   dtype=torch.bfloat16 if dtype == 'bfloat16' else torch.float16)


def dataset_num_classes(dataset: str, data_dir: Optional[str], split: str, hmdb_split: int = 1,
                        num_classes: Optional[int] = None) -> Optional[int]:
    """Class count of a dataset split, read cheaply (class folders, split files); synthetic: ``num_classes``
    or 10; timm sources: ``num_classes``."""
    kind = dataset_kind(dataset)
    if kind == 'imagenet':
        split_dir = check_image_folder(data_dir, split)
        return sum(1 for e in os.scandir(split_dir) if e.is_dir())
    if kind == 'cifar10':
        return 10
    if kind == 'hmdb51':
        from .video import find_hmdb51, hmdb51_classes
        return len(hmdb51_classes(*find_hmdb51(data_dir), hmdb_split))
    if kind == 'synthetic':
        return num_classes or 10
    return num_classes


def check_in_chans(dataset: str, in_chans: Optional[int]) -> None:
    """ValueError when ``--in-chans`` does not match a dataset of RGB files."""
    if in_chans is not None and in_chans != 3 and dataset_kind(dataset) in RGB_DATASETS:
        raise ValueError(f"--in-chans {in_chans}: --dataset {dataset} has RGB (3-channel) images; drop --in-chans or "
                         "pass 3 (the synthetic dataset renders any channel count)")


def resolve_img_size(model: str, img_size: Optional[int], model_kwargs: Dict[str, Any]) -> Optional[int]:
    """The base image size of an S4ND model: ``--img-size``, else an int ``img_size`` in ``--model-kwargs``."""
    if img_size is None and model.startswith('s4nd_') and isinstance(model_kwargs.get('img_size'), int):
        return model_kwargs['img_size']
    return img_size


def check_local_dir(folder: str) -> None:
    """A Hub-format model folder (``local-dir:``) must hold a readable ``config.json``: timm reads it before any of
    our code, so a broken one would surface as a bare JSONDecodeError naming no file."""
    path = os.path.join(folder, 'config.json')
    if not os.path.isfile(path):
        raise ValueError(f"{folder!r} is not a Hub-format model folder: no {path}; give a folder written by "
                         "s4nd_timm.hub.save_pretrained or s4nd-convert, or a checkpoint file")
    try:
        with open(path, encoding='utf-8') as fh:
            json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save the folder with s4nd_timm.hub.save_pretrained") \
            from None


def build_model(name: str, *, num_classes: Optional[int], pretrained: bool = False,
                checkpoint_path: Optional[str] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                img_size: Optional[int] = None, num_frames: Optional[int] = None, in_chans: Optional[int] = None,
                global_pool: Optional[str] = None, drop_rate: float = 0.0,
                drop_path_rate: Optional[float] = None) -> nn.Module:
    """``timm.create_model`` with clear errors for unknown names, unknown kwargs and missing checkpoints.

    For S4ND models (``s4nd_*``) the base resolution is part of the model: ``img_size`` is passed to it and,
    for video models, ``num_frames`` (unless set in ``model_kwargs``), so data and model agree on the base
    size and the rate. ``checkpoint_path``: weights to start from (timm's loader).
    """
    import timm
    if name.startswith('local-dir:'):
        check_local_dir(name[len('local-dir:'):])
    elif not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}. S4ND models: {timm.list_models('s4nd_*')}; any timm name "
                         "(timm.list_models()) works too.")
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise ValueError(f"--initial-checkpoint {checkpoint_path!r} not found; pass an existing checkpoint file")
    model_kwargs = dict(model_kwargs or {})
    if name.startswith('s4nd_'):
        if img_size is not None:
            model_kwargs.setdefault('img_size', img_size)
        if num_frames is not None and name.endswith('_3d'):
            model_kwargs.setdefault('num_frames', num_frames)
    kwargs = dict(pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                  global_pool=global_pool, in_chans=in_chans)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = timm.create_model(name, **kwargs, **model_kwargs)
    except TypeError as e:
        if 'unexpected keyword' not in str(e) and 'got multiple values' not in str(e):
            raise
        raise ValueError(f"{name} does not take the given arguments ({e}); check --model-kwargs "
                         f"{' '.join(f'{k}={v!r}' for k, v in model_kwargs.items())}") from None
    if checkpoint_path:
        state_dict, _ = read_checkpoint(checkpoint_path)
        load_weights(model, state_dict, checkpoint_path)
    return model


def read_checkpoint(path: str, use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Optional[argparse.Namespace]]:
    """(state_dict, the s4nd-train / timm flags stored with it or None) of a checkpoint file, on the CPU.

    Reads .safetensors and torch files (``safe_torch_load``: nothing that could run code is loaded); the
    weights are ``state_dict`` / ``model`` / the file itself, or with ``use_ema`` the EMA weights
    (``state_dict_ema`` / ``model_ema``; ValueError when the file has none).
    """
    from timm.models import clean_state_dict
    if path.endswith('.safetensors'):
        if use_ema:
            raise ValueError(f"{path} is a safetensors file with one set of weights and no EMA weights; drop --use-ema")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu'), None
        except Exception as e:  # SafetensorError and friends: name the file
            raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}; expected a state dict or a dict with "
                         "'state_dict'")
    args = ckpt.get('args') if isinstance(ckpt.get('args'), argparse.Namespace) else None
    keys = ('state_dict_ema', 'model_ema') if use_ema else ('state_dict', 'model')
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            return clean_state_dict(ckpt[key]), args
    if use_ema:
        raise ValueError(f"{path} has no EMA weights (no 'state_dict_ema'); drop --use-ema, or train with --model-ema")
    return clean_state_dict(ckpt), args


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """``model.load_state_dict(state_dict)`` (strict); a mismatch is a ValueError naming the file."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise ValueError(f"checkpoint {path} does not fit the model: {' '.join(lines[:3])[:400]} ... Build the "
                         "model it was trained as (--model, --model-kwargs, --num-classes, --in-chans, --img-size).") \
            from None


def model_data_config(model: nn.Module, dataset: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """timm's ``resolve_data_config`` for ``model`` with flag ``overrides`` (--img-size, --in-chans, --mean,
    ...). For cifar10 / synthetic (small, centred images) the evaluation crop is off unless ``crop_pct`` is
    given. Per-channel mean / std of the model's cfg are averaged to the input's channel count when it differs
    (e.g. ``--in-chans 1``); given as flags they must match it."""
    from timm.data import resolve_data_config
    input_size = overrides.get('input_size')
    chans = input_size[0] if input_size else overrides.get('in_chans') or model.pretrained_cfg['input_size'][0]
    for key in ('mean', 'std'):
        given = overrides.get(key)
        if given is not None and len(given) not in (1, chans):
            raise ValueError(f"--{key} has {len(given)} values but the input has {chans} channel(s); pass "
                             f"{chans} (or one for every channel)")
    config = resolve_data_config(overrides, model=model, verbose=False)
    if dataset_kind(dataset) in ('cifar10', 'synthetic') and overrides.get('crop_pct') is None:
        config['crop_pct'] = 1.0
    for key in ('mean', 'std'):
        values = tuple(config[key])
        if len(values) != config['input_size'][0]:  # the model's cfg stats for another channel count
            config[key] = (sum(values) / len(values),) * config['input_size'][0]
    return config


def set_channels_last(model: nn.Module, video: bool) -> None:
    """channels_last (channels_last_3d for video) for convolution weights only: S4ND's 4-D SSM tensors,
    e.g. B (1, S, M, 2), must keep a unit-stride last axis, so ``model.to(memory_format=...)`` would break them."""
    fmt, conv = (torch.channels_last_3d, nn.Conv3d) if video else (torch.channels_last, nn.Conv2d)
    for m in model.modules():
        if isinstance(m, conv):
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def check_writable(path: str, flag: str, folder: bool) -> None:
    """ValueError naming ``flag`` when ``path`` cannot be written: a file where a folder is wanted (or the
    reverse), or no write permission in the nearest existing folder above it. Checked at start-up, so a
    long run does not fail at its last step."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{flag} {path!r} is a {'file' if folder else 'folder'}; expected "
                         f"{'a folder' if folder else 'a file name'}")
    parent = os.path.abspath(path if folder and os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: cannot write in {parent!r}; choose a writable place")


def check_positive(flags: Sequence[Tuple[str, Any]]) -> None:
    """ValueError naming the flag unless each (flag, value) is None or positive (a list: each item)."""
    for flag, value in flags:
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and v <= 0:
                raise ValueError(f"{flag} {v}: expected a positive value")
