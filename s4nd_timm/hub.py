"""Pretrained weights of the ``s4nd_*`` models: loading through timm, saving and pushing in the Hub format.

Built on timm's own pretrained machinery (``timm.models.build_model_with_cfg``,
``save_for_hf``; ``create_model('local-dir:...')`` / ``('hf-hub:...')``), nothing copied.

Loading (all through ``timm.create_model`` after ``import s4nd_timm``)::

    timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True)            # tag -> the copy in the package
    timm.create_model('s4nd_vit_tiny_patch16.in1k', pretrained=True)                # tag -> its Hub repo
    timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True,
                      pretrained_cfg_overlay=dict(file='path/to/model.safetensors'))  # a local weight file
    timm.create_model('local-dir:path/to/folder', pretrained=True)                  # a folder from save_pretrained
    timm.create_model('hf-hub:s4nd-timm/s4nd_iso_cifar_small.synthetic', pretrained=True)

Every ``_create_*`` function of ``s4nd_timm.models`` builds through ``build_s4nd_model`` (a thin wrapper of
``build_model_with_cfg``), which adds:
    - a clear ``PretrainedWeightsError`` naming the Hub repo (or file) and how to load a local file instead, when
      ``pretrained=True`` and the weights cannot be had (Hub unreachable, offline, repo without weights, file
      missing, no source at all). Never a silent fallback to random weights (timm < 1.0.31 only logs a warning
      when a tag has no source);
    - a check, when the weights come from a file next to a ``config.json`` (a ``save_pretrained`` folder), that
      the model is built with the arguments the weights were saved with (S4ND settings such as ``img_size`` or
      ``bandlimit`` are not in the state dict, so a mismatch would load silently and compute something else);
    - ``model.s4nd_model_args``: the constructor arguments, which ``save_pretrained`` writes to ``config.json``
      so that ``local-dir:`` / ``hf-hub:`` rebuild exactly this model (timm < 1.0.31 does not record them).

Saving: ``save_pretrained(model, directory)`` writes ``model.safetensors``, ``config.json`` (architecture,
pretrained_cfg, model_args; timm's ``save_for_hf``) and ``README.md`` (the model card rendered from
``model_cards/``) through a temporary folder and ``os.replace``; ``push_to_hub(model, repo_id)`` uploads
such a folder.
"""
import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch.nn as nn

__all__ = [
    'HF_ORG', 'MODEL_CARDS_DIR', 'PACKAGED_WEIGHTS_DIR', 'PretrainedWeightsError', 'build_s4nd_model',
    'save_pretrained', 'push_to_hub', 'render_model_card', 'packaged_weights_dir', 'model_args_of']

_logger = logging.getLogger(__name__)

HF_ORG = 's4nd-timm'
_REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CARDS_DIR = _REPO_ROOT / 'model_cards'
# save_pretrained folders of the weights that ship with the package (package data, in the wheel too)
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'
CARD_TEMPLATE = '_template.md'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'

# build_model_with_cfg arguments that are not model constructor arguments
_BUILD_ONLY = frozenset((
    'pretrained_cfg', 'pretrained_cfg_overlay', 'model_cfg', 'feature_cfg', 'pretrained_strict',
    'pretrained_filter_fn', 'cache_dir', 'kwargs_filter', 'pretrained_model_args', 'features_only',
    'out_indices', 'feature_cls', 'pruned', 'device', 'dtype'))
# constructor arguments that do not describe the weights (training-time or runtime choices)
_RUNTIME_ARGS = frozenset(('drop_rate', 'drop_path_rate', 'proj_drop_rate', 'attn_drop_rate', 'block_drop_rate',
                           's4nd_backend'))
# arguments timm adapts itself when loading (classifier reset, first-conv channel adaptation, pooling)
_ADAPTED_ARGS = frozenset(('num_classes', 'in_chans', 'global_pool'))


class PretrainedWeightsError(RuntimeError):
    """``pretrained=True`` could not load the weights it names; nothing was loaded (no random-weight fallback)."""


def _hub_errors() -> Tuple[type, ...]:
    """Exception types that mean 'the weights could not be fetched or read' (Hub, network, filesystem)."""
    errors = [OSError]
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # huggingface_hub < 0.20 keeps them in utils
        from huggingface_hub import utils as hf_errors
    for name in ('EntryNotFoundError', 'LocalEntryNotFoundError', 'RepositoryNotFoundError', 'RevisionNotFoundError',
                 'GatedRepoError', 'HfHubHTTPError', 'OfflineModeIsEnabled'):
        cls = getattr(hf_errors, name, None)
        if isinstance(cls, type):
            errors.append(cls)
    for module, name in (('httpx', 'HTTPError'), ('httpx', 'TransportError'), ('requests', 'RequestException')):
        with contextlib.suppress(ImportError):
            errors.append(getattr(__import__(module), name))
    return tuple(errors)


def packaged_weights_dir(name: str) -> Path:
    """Folder of the weights of ``name`` ('<model>.<tag>') that ship with the package (it may not exist)."""
    return PACKAGED_WEIGHTS_DIR / name


def _local_file_hint(name: str) -> str:
    """How to load ``name`` from local files instead; names the repository copy when there is one."""
    copy = packaged_weights_dir(name) / WEIGHTS_NAME
    lines = [
        f"To load a local copy of these weights: timm.create_model('{name}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='/path/to/{WEIGHTS_NAME}')); a folder written by "
        f"s4nd_timm.hub.save_pretrained or s4nd-convert: timm.create_model('local-dir:/path/to/folder', "
        f"pretrained=True). A state-spaces/s4 reference checkpoint: convert it first with s4nd-convert."]
    if copy.is_file():
        lines.append(f"A copy ships with s4nd_timm: pretrained_cfg_overlay=dict(file='{copy}').")
    return ' '.join(lines)


def _card_hint(name: str) -> str:
    card = MODEL_CARDS_DIR / f'{name}.md'
    return f" How these weights are produced: {card}." if card.is_file() else ''


def _resolve_cfg(variant: str, pretrained_cfg: Any, overlay: Optional[Dict]) -> Dict[str, Any]:
    from timm.models._builder import resolve_pretrained_cfg
    return resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).to_dict()


def _cfg_name(variant: str, cfg: Mapping[str, Any]) -> str:
    arch = cfg.get('architecture') or variant
    return f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch


def _source(cfg: Mapping[str, Any]) -> Tuple[str, str]:
    """(kind, location) of the weights timm will load, in timm's priority order ('' when there is none)."""
    if cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
        return 'hf-hub', cfg['hf_hub_id']
    if cfg.get('source') == 'local-dir':
        return 'local-dir', str(cfg.get('file') or '')
    if cfg.get('state_dict') is not None:
        return 'state_dict', 'the state_dict in pretrained_cfg'
    if cfg.get('file'):
        return 'file', str(cfg['file'])
    if cfg.get('hf_hub_id'):
        return 'hf-hub', cfg['hf_hub_id']
    if cfg.get('url'):
        return 'url', str(cfg['url'])
    return '', ''


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists); raises TypeError if it cannot be written."""
    return json.loads(json.dumps(value))


def _pair(size: Any) -> Any:
    """An ``img_size`` as [H, W] (an int n is [n, n]); anything else unchanged."""
    return [size, size] if isinstance(size, int) else size


def _same_arg(key: str, saved: Any, current: Any) -> bool:
    try:
        saved, current = _jsonable(saved), _jsonable(current)
    except (TypeError, ValueError):  # not JSON: cannot have come from a config.json
        return saved == current
    if key == 'img_size':  # 32 == [32, 32]
        saved, current = _pair(saved), _pair(current)
    return saved == current


def _effective_args(model_cls: Callable, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Constructor defaults of ``model_cls`` updated by ``kwargs`` (what the model will be built with)."""
    args = {}
    with contextlib.suppress(TypeError, ValueError):
        for name, p in inspect.signature(model_cls).parameters.items():
            if p.default is not inspect.Parameter.empty:
                args[name] = p.default
    args.update(kwargs)
    return args


def _saved_config(weights: str) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The config.json next to a weight file (a save_pretrained folder), if there is a readable one."""
    config = Path(weights).parent / CONFIG_NAME
    if not config.is_file():
        return None
    try:
        return config, json.loads(config.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None


def _check_saved_args(
        cfg: Mapping[str, Any], saved: Tuple[Path, Dict[str, Any]], name: str, model_cls: Callable,
        model_kwargs: Mapping[str, Any]) -> None:
    """A weight file next to a config.json (a save_pretrained folder) must be loaded into the model it was saved
    from: compare the saved model_args with the arguments this model is about to be built with."""
    loc = cfg.get('file')
    config, saved = saved
    saved_args = saved.get('model_args') or {}
    arch = cfg.get('architecture')
    if saved.get('architecture') and arch and saved['architecture'] != arch:
        raise PretrainedWeightsError(
            f"{loc} holds weights of '{saved['architecture']}' ({config}); this model is '{arch}'. "
            f"Load that folder with timm.create_model('local-dir:{config.parent}', pretrained=True).")
    current = _effective_args(model_cls, model_kwargs)
    differ = [
        k for k in sorted(saved_args) if k in current and k not in _RUNTIME_ARGS and k not in _ADAPTED_ARGS
        and not _same_arg(k, saved_args[k], current[k])]
    if differ:
        diffs = '; '.join(f"{k}={saved_args[k]!r} (this model: {current[k]!r})" for k in differ)
        fix = ', '.join(f"{k}={saved_args[k]!r}" for k in differ)
        raise PretrainedWeightsError(
            f"{loc} was saved from {saved.get('architecture', name)} built with {diffs} ({config}). These settings "
            f"are not stored in the weights, so they would load silently into a model that computes something else. "
            f"Pass {fix} to create_model, or load the folder with its saved arguments: "
            f"timm.create_model('local-dir:{config.parent}', pretrained=True).")


def _prefetch_from_hub(hub_id: str, filename: Optional[str], cache_dir: Any) -> None:
    """Fetch the weight file timm is about to load (into the Hub cache, where timm then finds it) before the model
    is built, so an unreachable Hub or a repo without weights fails in a second, not after a long model build.
    Same file preference as timm: ``hf_hub_filename``, else model.safetensors, else pytorch_model.bin."""
    from huggingface_hub import hf_hub_download
    from timm import __version__ as timm_version
    from timm.models._hub import hf_split
    repo_id, revision = hf_split(hub_id)
    missing = None
    for name in ([filename] if filename else [WEIGHTS_NAME, 'pytorch_model.bin']):
        try:
            hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, library_name='timm',
                            library_version=timm_version)
            return
        except _hub_errors() as e:
            # a file the repo does not have (remote answer): try the next name; anything else (offline, cache miss,
            # no network, no repo) is final
            if type(e).__name__ not in ('EntryNotFoundError', 'RemoteEntryNotFoundError'):
                raise
            missing = e
    raise missing


def build_s4nd_model(
        model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False,
        tag_model_args: Optional[Mapping[str, Mapping[str, Any]]] = None, **kwargs,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` with clear pretrained-weight errors and recorded model arguments.

    Same arguments as ``build_model_with_cfg`` (``model_cls, variant, pretrained, pretrained_cfg=...,
    pretrained_cfg_overlay=..., pretrained_filter_fn=..., feature_cfg=..., **model_kwargs``), and
    ``tag_model_args``: '<variant>.<tag>' -> the model arguments that tag stands for (the ones its weights were
    trained with), used as defaults when the model is built under that tag; arguments passed explicitly win.

    Returns:
        The model (or its features wrapper), with ``s4nd_model_args``: the JSON-serializable constructor
        arguments it was built with (what ``save_pretrained`` records).
    Raises:
        PretrainedWeightsError: ``pretrained=True`` and the weights could not be found, fetched or matched; the
            message names the repo / file and how to load a local file instead.
    """
    from timm.models import build_model_with_cfg
    cfg = _resolve_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    name = _cfg_name(variant, cfg)
    kwargs = {**(tag_model_args or {}).get(name, {}), **kwargs}
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _BUILD_ONLY}
    if pretrained:
        kind, loc = _source(cfg)
        if not kind:
            raise PretrainedWeightsError(
                f"pretrained=True, but '{name}' has no weight source (no hf_hub_id, url or file in its pretrained "
                f"config); refusing to return random weights. Use a tag with weights "
                f"(timm.list_pretrained('{variant}*')), or pretrained=False.{_card_hint(name)} "
                f"{_local_file_hint(name)}")
        if kind == 'file':
            if not Path(loc).is_file():
                raise PretrainedWeightsError(
                    f"could not load pretrained weights for '{name}': the file '{loc}' does not exist. Nothing was "
                    f"loaded; no random weights are returned. {_local_file_hint(name)}")
            saved = _saved_config(loc)
            if saved is not None:
                _check_saved_args(cfg, saved, name, model_cls, model_kwargs)
                # the file's own config says how many classes its classifier has: without this, timm compares the
                # model with the registry tag's class count and drops a classifier that fits
                classes = saved[1].get('num_classes', (saved[1].get('pretrained_cfg') or {}).get('num_classes'))
                overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
                if isinstance(classes, int) and 'num_classes' not in overlay and cfg.get('num_classes') != classes:
                    overlay['num_classes'] = classes
                    kwargs['pretrained_cfg_overlay'] = overlay
        try:
            if kind == 'hf-hub':
                _prefetch_from_hub(loc, cfg.get('hf_hub_filename'), kwargs.get('cache_dir'))
            model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
        except _hub_errors() as e:
            where = {'hf-hub': f"the Hugging Face Hub repo '{loc}'", 'file': f"the file '{loc}'",
                     'local-dir': f"the folder '{loc}'", 'url': f"the url '{loc}'"}.get(kind, loc)
            why = (" The Hub could not be reached (offline, HF_HUB_OFFLINE=1 or no network), or the repo does not "
                   "exist or has no weights yet." if kind == 'hf-hub' else '')
            detail = str(e).strip().splitlines()[0] if str(e).strip() else (
                'no such file' if isinstance(e, FileNotFoundError) else 'no details')
            raise PretrainedWeightsError(
                f"could not load pretrained weights for '{name}' from {where}: {type(e).__name__}: {detail}.{why} "
                f"Nothing was loaded; no random weights are returned.{_card_hint(name)} {_local_file_hint(name)}"
            ) from e
    else:
        model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    recorded = {}
    for k, v in model_kwargs.items():
        try:
            recorded[k] = _jsonable(v)
        except (TypeError, ValueError):
            _logger.debug('model argument %s=%r is not JSON-serializable; not recorded', k, v)
    model.s4nd_model_args = recorded
    return model


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
    args = {k: v for k, v in args.items() if k not in _RUNTIME_ARGS}
    bad = []
    for k, v in list(args.items()):
        try:
            args[k] = _jsonable(v)
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
    """``cards_dir``, else the repository's model_cards/ (editable install), else the installed copy
    (``s4nd_timm/model_cards`` in a wheel), else ./model_cards."""
    if cards_dir is not None:
        return Path(cards_dir)
    for candidate in (MODEL_CARDS_DIR, Path(__file__).resolve().parent / 'model_cards', Path.cwd() / 'model_cards'):
        if (candidate / CARD_TEMPLATE).is_file():
            return candidate
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
        cards_dir: folder with the cards (default ``model_cards/`` of this repository).
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
        _logger.warning("model_cards/ not found (neither in the repository nor installed with the package; "
                        "pass cards_dir=): writing a minimal card for '%s'", name)
    input_size = tuple(cfg.get('input_size') or ())
    args = model_args_of(model)
    if 'img_size' in args:
        size = tuple(_pair(args['img_size']))
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


def _describe_saved_model(config_path: Path, model: nn.Module, model_args: Mapping[str, Any]) -> None:
    """config.json's pretrained_cfg must describe the saved model, not the registry tag it was built from: timm
    copies the tag's class count, input channels and input size (e.g. 1000 classes for a model re-headed to 10, or
    32 px for a model built with img_size=8). Rewrites them from the model (inside save_pretrained's temporary
    folder): the classifier, in_chans, and the input size from ``img_size`` (test size and pool size follow it)."""
    config = json.loads(config_path.read_text(encoding='utf-8'))
    cfg = config.get('pretrained_cfg') or {}
    before = json.dumps(cfg, sort_keys=True)
    num_classes, in_chans = getattr(model, 'num_classes', None), getattr(model, 'in_chans', None)
    if isinstance(num_classes, int) and cfg.get('num_classes') != num_classes:
        cfg['num_classes'] = num_classes
        for key in ('label_names', 'label_descriptions', 'label_offset'):
            cfg.pop(key, None)
    size = _pair(model_args.get('img_size'))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        size = list(size)
        old = (cfg.get('input_size') or [None])[1:]
        if old != size:
            pool = cfg.get('pool_size')
            strides = [o // p for o, p in zip(old, pool)] if pool and len(old) == 2 else None
            if strides and all(st and s % st == 0 for s, st in zip(size, strides)):
                cfg['pool_size'] = [s // st for s, st in zip(size, strides)]  # same total stride
            else:
                cfg.pop('pool_size', None)
            cfg['input_size'] = [3, *size]
            cfg['test_input_size'] = [3, *size]  # the registry's test size belongs to its own input size
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
        cards_dir: model card folder (default: the repository's ``model_cards/``).
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
