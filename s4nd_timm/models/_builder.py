"""The builder of every ``s4nd_*`` model: timm's ``build_model_with_cfg`` with clear pretrained-weight errors.

Every ``_create_*`` function of ``s4nd_timm.models`` builds through ``build_s4nd_model`` (a thin wrapper of
``timm.models.build_model_with_cfg``), which adds:
    - a clear ``PretrainedWeightsError`` naming the Hub repo (or file) and how to load a local file instead, when
      ``pretrained=True`` and the weights cannot be had (Hub unreachable, offline, repo without weights, file
      missing, no source at all). Never a silent fallback to random weights (timm < 1.0.31 only logs a warning
      when a tag has no source);
    - a ``ValueError`` naming the file when a weight file or the ``config.json`` beside it cannot be read
      (truncated, corrupt, not JSON, another architecture's arguments), and for arguments the model does not take;
    - a check, when the weights come from a file next to a ``config.json`` (a ``save_pretrained`` folder), that
      the model is built with the arguments the weights were saved with (S4ND settings such as ``img_size`` or
      ``bandlimit`` are not in the state dict, so a mismatch would load silently and compute something else);
    - ``load_state_dict`` through ``pretrained_filter_fn`` too (a pre-hook), so ``create_model(...,
      checkpoint_path=...)``, which timm loads without the filter, reads reference checkpoints as well;
    - ``model.s4nd_model_args``: the constructor arguments, which ``s4nd_timm.hub.save_pretrained`` writes to
      ``config.json`` so that ``local-dir:`` / ``hf-hub:`` rebuild exactly this model.
Saving, pushing and model cards live in ``s4nd_timm.hub`` (which imports this module, never the reverse).
"""
import contextlib
import functools
import importlib.resources
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch.nn as nn
from timm.layers import to_2tuple

__all__ = [
    'CONFIG_NAME', 'HF_ORG', 'PACKAGED_WEIGHTS_DIR', 'PretrainedWeightsError', 'RUNTIME_ARGS', 'WEIGHTS_NAME',
    'build_s4nd_model', 'jsonable', 'model_cards_dir', 'packaged_weights_dir']

_logger = logging.getLogger(__name__)

HF_ORG = 's4nd-timm'
# save_pretrained folders of the weights that ship with the package (package data, in the wheel too)
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / 'weights'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'

# build_model_with_cfg arguments that are not model constructor arguments
_BUILD_ONLY = frozenset((
    'pretrained_cfg', 'pretrained_cfg_overlay', 'model_cfg', 'feature_cfg', 'pretrained_strict',
    'pretrained_filter_fn', 'cache_dir', 'kwargs_filter', 'pretrained_model_args', 'features_only',
    'out_indices', 'feature_cls', 'pruned', 'device', 'dtype'))
# constructor arguments that do not describe the weights (training-time or runtime choices)
RUNTIME_ARGS = frozenset(('drop_rate', 'drop_path_rate', 'proj_drop_rate', 'attn_drop_rate', 'block_drop_rate',
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
        f"pretrained=True). A state-spaces/s4 reference checkpoint loads the same way through "
        f"pretrained_cfg_overlay (or convert it into a folder with s4nd-convert)."]
    if copy.is_file():
        lines.append(f"A copy ships with s4nd_timm: pretrained_cfg_overlay=dict(file='{copy}').")
    return ' '.join(lines)


def model_cards_dir() -> Optional[Path]:
    """The model cards installed with the package (package data ``s4nd_timm.model_cards``); None without them."""
    try:
        cards = Path(str(importlib.resources.files('s4nd_timm.model_cards')))
    except ModuleNotFoundError:
        return None
    return cards if cards.is_dir() else None


def _card_hint(name: str) -> str:
    cards = model_cards_dir()
    card = cards / f'{name}.md' if cards is not None else None
    return f" How these weights are produced: {card}." if card is not None and card.is_file() else ''


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


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists); raises TypeError if it cannot be written."""
    return json.loads(json.dumps(value))


def _same_arg(key: str, saved: Any, current: Any) -> bool:
    try:
        saved, current = jsonable(saved), jsonable(current)
    except (TypeError, ValueError):  # not JSON: cannot have come from a config.json
        return saved == current
    if key == 'img_size' and saved is not None and current is not None:  # 32 == [32, 32]
        saved, current = list(to_2tuple(saved)), list(to_2tuple(current))
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
    """The config.json next to a weight file (a save_pretrained folder), if there is one.

    Raises:
        ValueError: it is not a JSON object (broken or truncated file), naming it.
    """
    config = Path(weights).parent / CONFIG_NAME
    if not config.is_file():
        return None
    try:
        saved = json.loads(config.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        saved = e
    if not isinstance(saved, dict):
        detail = f"{type(saved).__name__}: {saved}" if isinstance(saved, Exception) else 'not a JSON object'
        raise ValueError(
            f"{config} (the config.json next to the weights {weights}) cannot be read ({detail}). Re-save the folder "
            f"with s4nd_timm.hub.save_pretrained, or remove the broken config.json to load the weight file alone.")
    return config, saved


def _check_model_kwargs(model_cls: Callable, model_kwargs: Mapping[str, Any], name: str,
                        from_config: Mapping[str, Any], where: str) -> None:
    """Every argument must be one ``model_cls`` takes; a wrong one is named, with the config.json it came from."""
    params = inspect.signature(model_cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(k for k in model_kwargs if k not in params)
    if not unknown:
        return
    source = (f" They come from the model_args of {where}, which describe another architecture: re-save that folder "
              f"with s4nd_timm.hub.save_pretrained." if any(k in from_config for k in unknown) else
              " Check the spelling, or see the model's docstring for its arguments.")
    raise ValueError(
        f"{name} ({model_cls.__name__}) does not take the argument(s) {unknown}.{source}")


def _file_errors() -> Tuple[type, ...]:
    """Exception types of a weight file that exists but cannot be read (truncated, corrupt, not a checkpoint)."""
    import pickle

    from safetensors import SafetensorError
    return SafetensorError, EOFError, pickle.UnpicklingError


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
        k for k in sorted(saved_args) if k in current and k not in RUNTIME_ARGS and k not in _ADAPTED_ARGS
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
        ValueError: an argument ``model_cls`` does not take; a weight file or its config.json that cannot be read.
    """
    from timm.models import build_model_with_cfg
    cfg = _resolve_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    name = _cfg_name(variant, cfg)
    kwargs = {**(tag_model_args or {}).get(name, {}), **kwargs}
    clip = tuple(cfg['input_size']) if len(cfg.get('input_size') or ()) == 4 else None
    if clip is not None:  # video (C, T, H, W): timm's builder reads a (C, H, W) input_size; restored after the build
        kwargs['pretrained_cfg_overlay'] = {**(kwargs.get('pretrained_cfg_overlay') or {}),
                                            'input_size': (clip[0], *clip[-2:])}
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _BUILD_ONLY}
    # a local-dir: / hf-hub: folder's config.json model_args (timm >= 1.0.31 names them; older: any with that source)
    from_config = kwargs.get('pretrained_model_args') or (
        model_kwargs if cfg.get('source') in ('local-dir', 'hf-hub') else {})
    _check_model_kwargs(model_cls, model_kwargs, name, from_config,
                        f"the config.json of {cfg.get('file') or cfg.get('hf_hub_id') or name}")
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
        except _file_errors() as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else 'no details'
            where = f"the folder {loc}" if kind == 'local-dir' else loc
            raise ValueError(
                f"the weights of '{name}' in {where} cannot be read ({type(e).__name__}: {detail}): the file is "
                f"truncated or corrupt. Download or save it again (s4nd_timm.hub.save_pretrained writes whole files "
                f"or nothing).") from e
    else:
        model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    if clip is not None:
        for m in model.modules():  # the model and, for features_only, the wrapped one
            if isinstance(getattr(m, 'pretrained_cfg', None), dict):
                m.pretrained_cfg['input_size'] = clip
    recorded = {}
    for k, v in model_kwargs.items():
        try:
            recorded[k] = jsonable(v)
        except (TypeError, ValueError):
            _logger.debug('model argument %s=%r is not JSON-serializable; not recorded', k, v)
    model.s4nd_model_args = recorded
    filter_fn = kwargs.get('pretrained_filter_fn')
    if filter_fn is not None and isinstance(model, model_cls):  # not a features_only wrapper
        # timm loads checkpoint_path= without the filter: let load_state_dict apply it too (reference checkpoints)
        model.register_load_state_dict_pre_hook(functools.partial(_filter_pre_hook, filter_fn))
    return model


def _filter_pre_hook(filter_fn: Callable, module: nn.Module, state_dict: Dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: pass the module's keys through its family's ``checkpoint_filter_fn``."""
    own = [k for k in state_dict if k.startswith(prefix)]
    filtered = filter_fn({k[len(prefix):]: state_dict[k] for k in own}, module)
    for k in own:
        del state_dict[k]
    state_dict.update({prefix + k: v for k, v in filtered.items()})


