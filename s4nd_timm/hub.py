"""Model cards, saving and pushing of the ``s4nd_*`` models in the Hub format (timm's ``save_for_hf``).

Loading goes through timm (``timm.create_model`` after ``import s4nd_timm``); every ``s4nd_*`` model is built by
``s4nd_timm.models._builder.build_s4nd_model``, which gives clear errors instead of random weights::

    timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True)            # tag -> the copy in the package
    timm.create_model('s4nd_vit_tiny_patch16.in1k', pretrained=True)                # tag -> its Hub repo
    timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True,
                      pretrained_cfg_overlay=dict(file='path/to/model.safetensors'))  # a local weight file
    timm.create_model('local-dir:path/to/folder', pretrained=True)                  # a folder from save_pretrained
    timm.create_model('hf-hub:s4nd-timm/s4nd_iso_cifar_small.synthetic', pretrained=True)

Saving: ``save_pretrained(model, directory)`` writes ``model.safetensors``, ``config.json`` (architecture,
pretrained_cfg, model_args; timm's ``save_for_hf``) and ``README.md`` (the model card rendered from the
``model_cards`` installed with the package) through a temporary folder and ``os.replace``;
``push_to_hub(model, repo_id)`` uploads such a folder.
"""
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import torch.nn as nn
from timm.layers import to_2tuple

from s4nd_timm.models._builder import (
    CONFIG_NAME, HF_ORG, PACKAGED_WEIGHTS_DIR, RUNTIME_ARGS, PretrainedWeightsError, jsonable, model_cards_dir,
    packaged_weights_dir)

__all__ = [
    'HF_ORG', 'MODEL_CARDS_DIR', 'PACKAGED_WEIGHTS_DIR', 'PretrainedWeightsError',
    'save_pretrained', 'push_to_hub', 'render_model_card', 'packaged_weights_dir', 'model_args_of']

_logger = logging.getLogger(__name__)

# the model cards installed with the package (s4nd_timm.model_cards, package data; None without them)
MODEL_CARDS_DIR = model_cards_dir()
CARD_TEMPLATE = '_template.md'
CARD_NAME = 'README.md'


def model_args_of(model: nn.Module, model_args: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The constructor arguments that rebuild ``model``: recorded at build, updated with its current state
    (classes, input channels, pooling, ``s4nd_resolution``) and ``model_args``; runtime-only ones dropped."""
    args = dict(getattr(model, 's4nd_model_args', None) or getattr(model, '_model_args', None) or {})
    for key in ('num_classes', 'in_chans'):
        if isinstance(getattr(model, key, None), int):
            args[key] = getattr(model, key)
    pool = getattr(model, 'global_pool', None)
    if pool is None and hasattr(model, 'head') and hasattr(model.head, 'pool_type'):
        pool = model.head.pool_type
    if isinstance(pool, str):
        args['global_pool'] = pool
    if isinstance(getattr(model, 's4nd_resolution', None), str):
        args['s4nd_resolution'] = model.s4nd_resolution
    args.update(model_args or {})
    args = {k: v for k, v in args.items() if k not in RUNTIME_ARGS}
    bad = []
    for k, v in list(args.items()):
        try:
            args[k] = jsonable(v)
        except (TypeError, ValueError):
            bad.append(k)
    if bad:
        raise ValueError(f"model arguments {bad} are not JSON-serializable, so config.json cannot rebuild the model; "
                         f"pass serializable replacements as model_args={{...}}.")
    return args


# ---------------------------------------------------------------------------------------------------- model cards
_PLACEHOLDER = re.compile(r'\{\{\s*([a-z_]+)\s*\}\}')
_DATASETS = {'in1k': 'imagenet-1k', 'c10': 'cifar10', 'in1k_ft_hmdb51': 'hmdb51', 'synthetic': 'synthetic-shapes'}


_MINIMAL_CARD = '''---
library_name: timm
license: {{ license }}
tags:
- image-classification
- timm
- s4nd
datasets:
- {{ dataset }}
---
# Model card for {{ model_name }}

`{{ architecture }}` from the `s4nd_timm` package: S4ND, Nguyen et al., NeurIPS 2022, arXiv:2210.06583.

{{ provenance }}

## Results
{{ results }}

## Usage
```python
import timm, s4nd_timm
model = timm.create_model('local-dir:/path/to/this/folder', pretrained=True).eval()
```
'''


def _find_cards_dir(cards_dir: Union[str, Path, None]) -> Optional[Path]:
    """``cards_dir``, else the model cards installed with the package (None if they have no template)."""
    if cards_dir is not None:
        return Path(cards_dir)
    if MODEL_CARDS_DIR is not None and (MODEL_CARDS_DIR / CARD_TEMPLATE).is_file():
        return MODEL_CARDS_DIR
    return None


def _registry_hub_id(name: str) -> Optional[str]:
    from timm.models import get_pretrained_cfg
    with contextlib.suppress(Exception):
        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id:
            return cfg.hf_hub_id
    return None


def render_model_card(
        model: nn.Module,
        name: Optional[str] = None,
        results: Optional[str] = None,
        provenance: Optional[str] = None,
        cards_dir: Union[str, Path, None] = None,
        extra: Optional[Mapping[str, str]] = None,
) -> str:
    """The model card (README.md) for ``model``: ``model_cards/<name>.md`` if it exists, else the template
    ``model_cards/_template.md``, with its ``{{ placeholders }}`` filled.

    Args:
        model: a timm-built model (has ``pretrained_cfg``).
        name: '<architecture>.<tag>' (default: from ``model.pretrained_cfg``).
        results: markdown with the numbers measured for these weights (each saying on what data and how);
            default: a line saying none were measured.
        provenance: markdown saying where the weights come from (default: a generic line).
        cards_dir: folder with the cards (default: the ``model_cards`` installed with the package).
        extra: more placeholder values.
    Returns:
        The card text (YAML front matter + markdown).
    Raises:
        FileNotFoundError: no card and no template; ValueError: a placeholder without a value.
    """
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    arch = cfg.get('architecture') or type(model).__name__
    tag = cfg.get('tag') or ''
    name = name or (f'{arch}.{tag}' if tag else arch)
    cards = _find_cards_dir(cards_dir)
    path = cards / f'{name}.md' if cards is not None else None
    if path is not None and not path.is_file():
        path = cards / CARD_TEMPLATE
    if path is None or not path.is_file():
        if cards_dir is not None:
            raise FileNotFoundError(f"no model card for '{name}' and no template {Path(cards_dir) / CARD_TEMPLATE}")
        _logger.warning("the model cards are not installed with the package (s4nd_timm.model_cards); pass "
                        "cards_dir=: writing a minimal card for '%s'", name)
    input_size = tuple(cfg.get('input_size') or ())
    args = model_args_of(model)
    size = _base_input_size(args, cfg)
    if size is not None:
        input_size = (args.get('in_chans', input_size[0] if input_size else 3), *size)
    values = {
        'model_name': name, 'architecture': arch, 'tag': tag or '(none)', 'dataset': _DATASETS.get(tag, 'unknown'),
        'hf_hub_id': _registry_hub_id(name) or f'{HF_ORG}/{name}',
        'params_m': f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        'input_size': ' x '.join(str(s) for s in input_size) or 'any',
        'num_classes': str(getattr(model, 'num_classes', cfg.get('num_classes', ''))),
        'license': cfg.get('license') or 'apache-2.0',
        'model_args': json.dumps(args, sort_keys=True),
        'results': results or '_No numbers have been measured for these weights yet._',
        'provenance': provenance or f'Saved with `s4nd_timm.hub.save_pretrained` from a `{arch}` model.',
    }
    values.update(extra or {})
    text = path.read_text(encoding='utf-8') if path is not None and path.is_file() else _MINIMAL_CARD
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ValueError(f"model card {path} uses placeholders without a value: {missing}; known: {sorted(values)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


# ---------------------------------------------------------------------------------------------- saving / pushing
@contextlib.contextmanager
def atomic_directory(directory: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``directory`` (``os.replace``), on any error it is
    removed, so ``directory`` is either untouched or complete.

    Raises:
        FileExistsError: ``directory`` exists, is not empty and ``overwrite`` is False.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a folder; choose another output folder.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty; choose another folder or pass overwrite=True.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', suffix='.tmp', dir=directory.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        if directory.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', suffix='.old', dir=directory.parent))
            os.replace(directory, old)  # an empty target folder would do for os.replace, a full one must go aside
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _base_input_size(model_args: Mapping[str, Any], cfg: Mapping[str, Any]) -> Optional[list]:
    """The input size without channels, [H, W] or [T, H, W] for video, that the model was built for (``img_size``,
    ``num_frames``; the other from ``cfg['input_size']``), or None when neither argument was given."""
    if model_args.get('img_size') is None and not model_args.get('num_frames'):
        return None
    old = list(cfg.get('input_size') or [])[1:]
    spatial = list(to_2tuple(model_args['img_size'])) if model_args.get('img_size') is not None else old[-2:]
    frames = [model_args['num_frames']] if model_args.get('num_frames') else old[:-2]
    return [*frames, *spatial]


def _describe_saved_model(config_path: Path, model: nn.Module, model_args: Mapping[str, Any]) -> None:
    """config.json's pretrained_cfg must describe the saved model, not the registry tag it was built from: timm
    copies the tag's class count, input channels and input size (e.g. 1000 classes for a model re-headed to 10, or
    32 px for a model built with img_size=8). Rewrites them from the model (inside save_pretrained's temporary
    folder): the classifier, in_chans, and the input size from ``img_size`` / ``num_frames`` (test size and pool size
    follow it)."""
    config = json.loads(config_path.read_text(encoding='utf-8'))
    cfg = config.get('pretrained_cfg') or {}
    before = json.dumps(cfg, sort_keys=True)
    num_classes, in_chans = getattr(model, 'num_classes', None), getattr(model, 'in_chans', None)
    if isinstance(num_classes, int) and cfg.get('num_classes') != num_classes:
        cfg['num_classes'] = num_classes
        for key in ('label_names', 'label_descriptions', 'label_offset'):
            cfg.pop(key, None)
    built = dict(getattr(model, 'pretrained_cfg', None) or {})  # the registry cfg the model was built with
    base = list(built.get('input_size') or [])[1:]
    size = _base_input_size(model_args, built) or base
    if size:
        if size == base:
            want = {'input_size': built['input_size'], 'pool_size': built.get('pool_size'),
                    'test_input_size': built.get('test_input_size') or built['input_size']}
        else:  # built at another size: the same total stride gives the pool size
            pool = built.get('pool_size')
            strides = [o // p for o, p in zip(base, pool)] if pool and len(base) == len(pool) == len(size) else None
            fits = strides and all(st and s % st == 0 for s, st in zip(size, strides))
            # the registry's test size belongs to its own input size
            want = {'input_size': [3, *size], 'test_input_size': [3, *size],
                    'pool_size': [s // st for s, st in zip(size, strides)] if fits else None}
        for key, value in want.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = list(value)
    if isinstance(in_chans, int):
        for key in ('input_size', 'test_input_size', 'min_input_size'):
            if cfg.get(key) and cfg[key][0] != in_chans:
                cfg[key] = [in_chans, *cfg[key][1:]]
    if json.dumps(cfg, sort_keys=True) != before:
        config['pretrained_cfg'] = cfg
        config_path.write_text(json.dumps(config, indent=2), encoding='utf-8')


def save_pretrained(
        model: nn.Module,
        directory: Union[str, Path],
        model_args: Optional[Mapping[str, Any]] = None,
        model_config: Optional[Mapping[str, Any]] = None,
        results: Optional[str] = None,
        provenance: Optional[str] = None,
        name: Optional[str] = None,
        cards_dir: Union[str, Path, None] = None,
        overwrite: bool = False,
) -> Path:
    """Write ``model`` as a Hub folder: model.safetensors, config.json, README.md (atomically).

    The folder loads back with ``timm.create_model('local-dir:<directory>', pretrained=True)`` (after
    ``import s4nd_timm``), or its weight file with ``pretrained_cfg_overlay=dict(file=...)``, giving identical
    outputs; ``push_to_hub`` uploads the same folder.

    Args:
        model: a model built by timm (``timm.create_model``), e.g. an ``s4nd_*`` model.
        directory: output folder (created; must not exist with content unless ``overwrite``).
        model_args: constructor arguments to record in addition to / instead of those recorded at build.
        model_config: extra config.json fields for timm's ``save_for_hf`` (e.g. ``label_names``).
        results: markdown table of numbers measured for these weights, each saying on what data and how (card).
        provenance: markdown saying where the weights come from (card).
        name: '<architecture>.<tag>' the card is chosen by (default: the model's pretrained tag, so a model built
            as 's4nd_iso_cifar_small.synthetic' gets that tag's card); a name without a card file, e.g. the bare
            architecture, renders the generic template ``model_cards/_template.md``.
        cards_dir: model card folder (default: the ``model_cards`` installed with the package).
        overwrite: replace an existing non-empty folder.
    Returns:
        The folder path.
    """
    from timm.models import save_for_hf
    if not getattr(model, 'pretrained_cfg', None):
        raise TypeError(f"{type(model).__name__} has no pretrained_cfg; build it with timm.create_model(...) "
                        f"(after import s4nd_timm) so config.json can name its architecture.")
    args = model_args_of(model, model_args)
    card = render_model_card(model, name=name, results=results, provenance=provenance, cards_dir=cards_dir)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        save_for_hf(model, str(tmp), model_config=dict(model_config or {}), model_args=args, safe_serialization=True)
        _describe_saved_model(tmp / CONFIG_NAME, model, args)
        (tmp / CARD_NAME).write_text(card, encoding='utf-8')
    return Path(directory)


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        commit_message: str = 'Add model',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: bool = False,
        create_pr: bool = False,
        **save_kwargs,
):
    """Upload ``model`` to the Hugging Face Hub repo ``repo_id`` as written by ``save_pretrained`` (safetensors,
    config.json, model card). Needs network access and a write token (``token`` or ``hf auth login``).

    Args:
        model, **save_kwargs: as ``save_pretrained`` (model_args, model_config, results, provenance, name, ...).
        repo_id: 'org/name', e.g. 's4nd-timm/s4nd_iso_cifar_small.synthetic' (created if missing).
        commit_message, token, revision, private, create_pr: as ``huggingface_hub.HfApi.upload_folder``.
    Returns:
        The ``huggingface_hub`` commit info.
    """
    from huggingface_hub import HfApi
    from timm import __version__ as timm_version
    api = HfApi(token=token, library_name='timm', library_version=timm_version)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / 'model', **save_kwargs)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)
