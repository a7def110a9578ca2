"""``s4nd-convert``: a reference S4ND checkpoint (state-spaces/s4) -> an ``s4nd_*`` timm model in the Hub format.

Input: a PyTorch Lightning ``.ckpt`` (``ckpt['state_dict']``) or a plain state dict (``.pt``/``.pth``/``.safetensors``)
of ConvNeXt-S4ND (2-D, 3-D), ViT-S4ND or the isotropic CIFAR models, S4ND kernels under current or paper-era names
(docs/design.md §8). This module holds the safe loader, the inference of the model from the tensors, and the command;
the key rules are each family's ``checkpoint_filter_fn`` (``s4nd_timm/models/``), which also lets timm load such a
checkpoint directly into a model built with the right arguments. The output folder is written by
``s4nd_timm.hub.save_pretrained`` and loads with ``timm.create_model('local-dir:<folder>', pretrained=True)``.

Nothing from the file is executed: ``torch.load(weights_only=True)``; ``--inert-objects`` loads the non-tensor objects a
Lightning checkpoint pickles (its Hydra config) as inert placeholders. Every tensor without a place, every model tensor
without a source, every shape or length mismatch and every non-finite tensor is reported by name, and nothing is
written unless all is well (or ``--allow-partial`` / ``--allow-nonfinite`` is given).
"""
import argparse
import hashlib
import math
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .models import s4nd_convnext, s4nd_iso, s4nd_vit
from .models._reference_keys import ConversionError, ReferenceKeys, fit_reference, strip_lightning

__all__ = [
    'ConversionError', 'ConversionReport', 'load_checkpoint', 'extract_state_dict', 'detect_family',
    'infer_model', 'registered_args', 'convert_state_dict', 'convert_checkpoint', 'main']

FAMILIES = {'convnext': s4nd_convnext, 'vit': s4nd_vit, 'iso': s4nd_iso}
# the model a checkpoint of no registered size is built as (with its sizes passed explicitly)
_DEFAULT_MODEL = {'convnext': 's4nd_convnext_tiny', 'convnext_3d': 's4nd_convnext_tiny_3d',
                  'vit': 's4nd_vit_base_patch16', 'iso': 's4nd_iso_cifar'}


@dataclass
class ConversionReport(ReferenceKeys):
    """What a conversion did: source, target model and every key that did not map cleanly."""
    source: str = ''
    family: str = ''
    model_name: str = ''
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    mapped: int = 0

    def summary(self) -> str:
        """Markdown for the model card (provenance) and the command's output."""
        args = ', '.join(f'{k}={v!r}' for k, v in sorted(self.model_kwargs.items()))
        lines = [
            f"Converted with `s4nd-convert` from the reference (state-spaces/s4) checkpoint {self.source} "
            f"({self.family}, {'paper-era v3' if self.layout == 'v3' else 'current (HEAD)'} kernel names) into "
            f"`{self.model_name}` ({args}); {self.mapped} tensors mapped (key map: docs/design.md §8)."]
        for why in dict.fromkeys(w for _, w in self.dropped):  # one line per reason, tensors grouped by module
            keys = [k for k, w in self.dropped if w == why]
            groups = list(dict.fromkeys(k.rsplit('.', 1)[0] + '.*' for k in keys))
            lines.append(f"- dropped {len(keys)} tensors ({', '.join(f'`{g}`' for g in groups)}): {why}")
        for note in self.notes:
            lines.append(f"- {note}")
        if not self.ok:
            lines.append("- **partial conversion** (`--allow-partial`); these model tensors keep their initialization:")
            lines += [f"  - {line.strip()}" for line in self.problems().splitlines() if line.startswith('    ')]
        return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------------- loading
class InertObject:
    """Placeholder for an object a checkpoint pickles (e.g. a Hydra config): built without running any code."""
    _name = 'object'

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self) -> str:
        return f'<inert {self._name}>'


def _inert_class(name: str) -> type:
    return type(name.rsplit('.', 1)[-1], (InertObject,), {'_name': name})


def _unsafe_globals(path: Path, error: Exception) -> List[str]:
    names = []
    getter = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if getter is not None:
        try:
            names = list(getter(str(path)))
        except Exception:  # legacy (non-zip) format: read the name from the error
            names = []
    if not names:
        names = re.findall(r'GLOBAL ([\w.]+) was not an allowed global', str(error))
    return sorted(set(names))


def _unreadable(path: Path, error: Exception, kind: str = 'a checkpoint') -> ConversionError:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else 'no details'
    return ConversionError(
        f"cannot read {path}: truncated or not {kind} ({type(error).__name__}: {detail}). Expected a Lightning .ckpt, "
        f"a torch.save'd state dict (.pt/.pth) or a .safetensors file.")


def load_checkpoint(path: Union[str, Path], inert_objects: bool = False) -> Any:
    """Read a checkpoint without executing code from it: ``torch.load(weights_only=True)`` (or safetensors).

    Args:
        path: .ckpt / .pt / .pth / .bin (torch) or .safetensors.
        inert_objects: load non-tensor objects the pickle names (classes, functions) as ``InertObject``
            placeholders, still under weights_only=True (only torch's allowlist and the placeholders can be called).
    Returns:
        The loaded object (a dict for every checkpoint this converter reads).
    Raises:
        ConversionError: missing, truncated or unreadable file, or a pickle that needs objects other than tensors
            and containers; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device='cpu')
        except Exception as e:
            raise _unreadable(path, e, 'a safetensors file') from e
    try:
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if not names:
            raise _unreadable(path, e) from e
        if not inert_objects:
            raise ConversionError(
                f"refusing to unpickle {path}: besides tensors it references {names}, which a weights_only load does "
                f"not run (running them could execute arbitrary code). A Lightning checkpoint of the reference stores "
                f"its Hydra config (omegaconf) this way under 'hyper_parameters'; if that is all, pass "
                f"--inert-objects to load such objects as inert placeholders (nothing from the file is executed), or "
                f"save the plain state dict in an environment you trust: "
                f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'state_dict.pt').") from e
    except Exception as e:
        raise _unreadable(path, e) from e
    seen: List[str] = []
    for _ in range(64):  # names nested in other objects surface one load at a time in the legacy format
        stubs = [(_inert_class(n), n) for n in names]
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(str(path), map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            more = [n for n in _unsafe_globals(path, e) if n not in names]
            if not more or more == seen:
                raise ConversionError(f"cannot read {path} even with inert placeholders: {e}") from e
            seen, names = more, names + more
    raise ConversionError(f"cannot read {path}: too many non-tensor objects")


def extract_state_dict(ckpt: Any, key: Optional[str] = None) -> Dict[str, Tensor]:
    """The reference model's tensors: ``ckpt[key]``, else Lightning's ``state_dict``, else ``ckpt`` itself.

    Keys are kept as stored (Lightning's ``model.`` prefix included), so reports name them as in the file.
    """
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"the checkpoint holds a {type(ckpt).__name__}, not a dict of tensors")
    if key is not None:
        if key not in ckpt:
            raise ConversionError(f"the checkpoint has no entry {key!r}; its top-level entries: {sorted(ckpt)}")
        sd = ckpt[key]
    elif isinstance(ckpt.get('state_dict'), Mapping):
        sd = ckpt['state_dict']
    else:
        sd = ckpt
    if not isinstance(sd, Mapping):
        raise ConversionError(f"the state dict is a {type(sd).__name__}, not a dict of tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(
            f"the state dict holds non-tensor entries {bad[:10]}{' ...' if len(bad) > 10 else ''}; pass "
            f"--state-dict-key with the entry that holds the model's tensors (top-level entries: {sorted(ckpt)})")
    return dict(sd)


def detect_family(sd: Mapping[str, Tensor]) -> str:
    """'convnext' (stages.*), 'vit' (patch_embed.*) or 'iso' (layers.*) from reference key names."""
    keys = [strip_lightning(k) for k in sd]
    for family, prefix in (('convnext', 'stages.'), ('vit', 'patch_embed.'), ('iso', 'layers.')):
        if any(k.startswith(prefix) for k in keys):
            return family
    raise ConversionError(
        f"cannot tell the model family from the keys (first: {keys[:5]}): expected stages.* (ConvNeXt-S4ND), "
        f"patch_embed.* (ViT-S4ND) or layers.* (isotropic); is this a state-spaces/s4 S4ND checkpoint?")


# ------------------------------------------------------------------------------------------------- model args
def _dim(sd: Mapping[str, Tensor], keys: Sequence[str], axis: int = 0) -> Optional[int]:
    """Size of ``axis`` of the first of ``keys`` present (None if none is: the load then reports it missing)."""
    return next((sd[k].shape[axis] for k in keys if k in sd), None)


def _count(sd: Mapping[str, Tensor], pattern: str) -> Optional[int]:
    """1 + the largest index that ``pattern`` (one group) captures in the keys, None if none matches."""
    found = [int(m[1]) for k in sd if (m := re.match(pattern, k))]
    return 1 + max(found) if found else None


def _l_kernel(sd: Mapping[str, Tensor], prefix: str, axis: int) -> int:
    """The DPLR kernel length of ``prefix``'s axis kernel (0: raw C, or a diagonal kernel, which has none)."""
    t = sd.get(f'{prefix}kernel.{axis}.l_kernel')
    return int(t) if t is not None else 0


def _put(kw: Dict[str, Any], **values) -> None:
    kw.update({k: v for k, v in values.items() if v is not None})


def _size(lengths: Sequence[int], scale: int) -> Union[None, int, Tuple[int, ...]]:
    """Base size from kernel lengths (None if any is unknown): an int when all sides agree."""
    if not all(lengths):
        return None
    sides = tuple(n * scale for n in lengths)
    return sides[0] if len(set(sides)) == 1 else sides


def _convnext_args(sd: Mapping[str, Tensor], kw: Dict[str, Any], dplr: bool) -> bool:
    """ConvNeXt arguments into ``kw``; returns True for a video (3-D) model."""
    stages: Dict[int, int] = {}
    for k in sd:
        if (m := re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', k)):
            stages[int(m[1])] = max(stages.get(int(m[1]), 0), int(m[2]) + 1)
    if not stages or sorted(stages) != list(range(len(stages))):
        raise ConversionError(f"ConvNeXt checkpoint with stages {sorted(stages)}: expected stages 0..n-1 with blocks")
    depths = tuple(stages[s] for s in sorted(stages))
    dims = tuple(_dim(sd, [f'stages.{s}.blocks.0.{n}' for n in ('norm.weight', 'gamma', 'mlp.fc2.bias')])
                 for s in sorted(stages))
    n_axes = _count(sd, r'stages\.\d+\.blocks\.\d+\.conv_dw\.kernel\.(\d+)\.') or 2
    fc1 = _dim(sd, ['stages.0.blocks.0.mlp.fc1.weight'])
    stem = 's4nd' if any(k.startswith('stem.proj.') for k in sd) else 'patch'
    _put(kw, depths=depths, dims=dims, s4nd_init='fourier' if dplr else 'legs', stem_type=stem,
         downsample_type='s4nd' if any('.downsample.proj.' in k for k in sd) else 'conv',
         mlp_ratio=fc1 / dims[0] if fc1 and dims[0] else None)
    if not any(k.endswith('.gamma') for k in sd):
        kw['ls_init_value'] = None
    patch = 4
    if stem == 'patch' and 'stem.conv.weight' in sd:
        w = sd['stem.conv.weight']
        patch = w.shape[-1]
        _put(kw, in_chans=w.shape[1], patch_size=patch, temporal_patch_size=w.shape[2] if n_axes == 3 else None)
    elif stem == 's4nd':
        stem_chs, inv_dt = _dim(sd, ['stem.proj.weight'], 1), _dim(sd, ['stem.conv.kernel.0.inv_dt'])
        _put(kw, stem_chs=stem_chs, in_chans=inv_dt // stem_chs if inv_dt and stem_chs else None,
             stem_l_max=_l_kernel(sd, 'stem.conv.', 0) or None)
    _put(kw, num_classes=_dim(sd, ['head.fc.weight', 'head.fc.bias']) or 0)
    block = 'stages.0.blocks.0.conv_dw.'
    _put(kw, img_size=_size([_l_kernel(sd, block, a) for a in (n_axes - 2, n_axes - 1)], patch))
    if n_axes == 3:
        _put(kw, num_frames=_size([_l_kernel(sd, block, 0)], kw.get('temporal_patch_size', 2)))
    return n_axes == 3


def _vit_args(sd: Mapping[str, Tensor], kw: Dict[str, Any], notes: List[str]) -> None:
    embed_dim = _dim(sd, ['patch_embed.proj.weight', 'norm.weight', 'blocks.0.norm1.weight'])
    patch = _dim(sd, ['patch_embed.proj.weight'], -1)
    fc1 = _dim(sd, ['blocks.0.mlp.fc1.weight'])
    _put(kw, s4nd_init='legs', in_chans=_dim(sd, ['patch_embed.proj.weight'], 1), patch_size=patch,
         depth=_count(sd, r'blocks\.(\d+)\.'), embed_dim=embed_dim,
         mlp_ratio=fc1 / embed_dim if fc1 and embed_dim else None, s4nd_channels=_dim(sd, ['blocks.0.mixer.D']),
         num_classes=_dim(sd, ['head.weight', 'head.bias']) or 0)
    length = _l_kernel(sd, 'blocks.0.mixer.', 0)  # patches of the row-major sequence
    side = math.isqrt(length)
    if length and side * side == length:
        kw['img_size'] = side * (patch or 16)
    elif length:
        notes.append(f"l_kernel={length} patches is not a square: pass --model-kwargs img_size=(H, W)")


def _iso_args(sd: Mapping[str, Tensor], kw: Dict[str, Any]) -> None:
    _put(kw, s4nd_init='legs', in_chans=_dim(sd, ['stem.weight'], 1), mixer='s4nd',
         num_classes=_dim(sd, ['head.weight', 'head.bias']) or 0, d_model=_dim(sd, ['stem.weight', 'norm.weight']),
         depth=_count(sd, r'blocks\.(\d+)\.'),
         img_size=_size([_l_kernel(sd, 'blocks.0.mixer.', a) for a in (0, 1)], 1))


def registered_args(name: str) -> Dict[str, Any]:
    """The constructor arguments a registered ``s4nd_*`` entrypoint sets (its sizes): its module's ``MODEL_ARGS``."""
    from timm.models import model_entrypoint
    return dict(sys.modules[model_entrypoint(name).__module__].MODEL_ARGS[name])


def _registered_model(family: str, kw: Dict[str, Any], video: bool) -> Tuple[str, Dict[str, Any]]:
    """The registered model whose own arguments (except the clip length) the inferred ones match, and the
    arguments left to pass; else the family's default model with all of them."""
    import timm
    for name in timm.list_models(FAMILIES[family].__name__.rsplit('.', 1)[-1] + '*'):
        own = {k: v for k, v in registered_args(name).items() if k != 'num_frames'}
        if ('num_frames' in registered_args(name)) == video and all(kw.get(k) == v for k, v in own.items()):
            return name, {k: v for k, v in kw.items() if k not in own}
    return _DEFAULT_MODEL[f'{family}_3d' if video else family], kw


def infer_model(
        tensors: Mapping[str, Tensor], family: str, given: Optional[Mapping[str, Any]] = None,
        notes: Optional[List[str]] = None,
) -> Tuple[str, Dict[str, Any]]:
    """Registered model name and constructor arguments that fit reference tensors under our names.

    Args:
        tensors: ``ReferenceKeys.tensors`` of the family's ``reference_keys``.
        family: 'convnext', 'vit' or 'iso'.
        given: arguments the caller passes (they win; a raw-C checkpoint needs its base size among them).
        notes: list the notes are appended to (what the checkpoint does not tell).
    Returns:
        (model name, kwargs for ``timm.create_model``).
    Raises:
        ConversionError: no S4ND tensors; or DPLR kernels with l_kernel = 0 (raw C: the base size is not in the
            checkpoint, and C̃ depends on it) without ``img_size`` (and ``stem_l_max`` for an S4ND stem) in ``given``.
    """
    given, notes = given or {}, notes if notes is not None else []
    a_real = next((t for k, t in tensors.items() if re.search(r'\.kernel\.\d+\.A_real$', k)), None)
    if a_real is None:
        raise ConversionError("no S4ND kernel tensors (kernel.<i>.A_real) found; is this an S4ND checkpoint?")
    dplr = any(re.search(r'\.kernel\.\d+\.P$', k) for k in tensors)
    kw: Dict[str, Any] = dict(d_state=2 * a_real.shape[-1], s4nd_mode='dplr' if dplr else 'diag')
    video = False
    if family == 'convnext':
        video = _convnext_args(tensors, kw, dplr)
    elif family == 'vit':
        _vit_args(tensors, kw, notes)
    elif family == 'iso':
        _iso_args(tensors, kw)
    else:
        raise ConversionError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    # the arguments that set the kernels' lengths, where the checkpoint does not tell them
    lengths = ['img_size'] + ['stem_l_max'] * (kw.get('stem_type') == 's4nd') + ['num_frames'] * video
    unknown = [a for a in lengths if a not in kw]
    raw = dplr and any(k.endswith('.l_kernel') and int(t) == 0 for k, t in tensors.items())
    needed = [a for a in unknown if a not in given]
    if raw and needed:
        raise ConversionError(
            f"this checkpoint never ran a forward (DPLR l_kernel = 0): its C is the raw C and the base size it was "
            f"trained at is not in the file, while C̃ = C(I - Ā^L) depends on it (docs/design.md §1.2, §8). Pass it: "
            f"--model-kwargs {' '.join(f'{a}=N' for a in needed)}.")
    for arg in unknown:
        why = 'l_kernel = 0' if dplr else 'diagonal kernels'
        notes.append(f"the base size is not in the checkpoint ({why}): {arg}={given[arg]!r} as given" if arg in given
                     else f"the base size is not in the checkpoint ({why}): the model's default {arg} is used; pass "
                          f"--model-kwargs {arg}=N if it was trained at another size")
    return _registered_model(family, kw, video)


# --------------------------------------------------------------------------------------------------- conversion
def convert_state_dict(
        sd: Mapping[str, Tensor],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        tag: Optional[str] = None,
        allow_partial: bool = False,
        family: Optional[str] = None,
        source: str = 'a state dict',
        allow_nonfinite: bool = False,
) -> Tuple[torch.nn.Module, ConversionReport]:
    """Build the matching ``s4nd_*`` model and load a reference state dict into it.

    Args:
        sd: reference tensors (``extract_state_dict``; Lightning's ``model.`` prefix optional).
        model_name: registered model (default: inferred from the tensors).
        model_kwargs: constructor arguments overriding the inferred ones (e.g. ``bandlimit``).
        tag: pretrained tag whose config the model carries (e.g. 'in1k'; default: the model's default tag).
        allow_partial: load even if tensors are missing, unmatched or mis-shaped (they are reported).
        family: 'convnext', 'vit' or 'iso' (default: from the key names).
        source: how the report names the checkpoint.
        allow_nonfinite: convert tensors holding NaN / Inf instead of refusing.
    Returns:
        (model in eval mode, report).
    Raises:
        ConversionError: any missing / unmatched / mis-shaped / non-finite tensor (unless allowed), a DPLR
            checkpoint for a diagonal-kernel model, a raw-C checkpoint without its base size, or an unknown layout.
    """
    import timm
    family = family or detect_family(sd)
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    report = ConversionReport(**vars(FAMILIES[family].reference_keys(sd)), source=source, family=family)
    name, kwargs = infer_model(report.tensors, family, model_kwargs, report.notes)
    kwargs.update(model_kwargs or {})
    name = model_name or name
    report.model_name, report.model_kwargs = f'{name}.{tag}' if tag else name, dict(kwargs)
    try:
        model = timm.create_model(report.model_name, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConversionError(
            f"cannot build {report.model_name} with {kwargs}: {type(e).__name__}: {e}. Pass --model / --model-kwargs "
            f"to fix the arguments read from the checkpoint.") from e
    load = fit_reference(report, model, raw_c=True, allow_nonfinite=allow_nonfinite)
    report.mapped = len(load)
    if not report.ok and not allow_partial:
        raise ConversionError(
            f"cannot convert {source} into {report.model_name} "
            f"({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))}):\n"
            f"{report.problems()}\nNothing was written. Fix the model with --model / --model-kwargs, or pass "
            f"--allow-partial to write it with the listed model tensors left at their initialization.")
    result = model.load_state_dict(load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model.eval(), report


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def convert_checkpoint(
        checkpoint: Union[str, Path],
        output_dir: Union[str, Path],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        tag: Optional[str] = None,
        allow_partial: bool = False,
        state_dict_key: Optional[str] = None,
        inert_objects: bool = False,
        overwrite: bool = False,
        allow_nonfinite: bool = False,
) -> Tuple[Path, ConversionReport]:
    """Convert a reference checkpoint file and write a Hub folder (model.safetensors, config.json, README.md).

    The folder loads with ``timm.create_model('local-dir:<output_dir>', pretrained=True)``. It is written through a
    temporary folder: after an error nothing is left at ``output_dir``. Arguments as ``convert_state_dict``,
    ``load_checkpoint`` and ``s4nd_timm.hub.save_pretrained``.

    Returns:
        (output folder, report).
    Raises:
        ConversionError: as ``load_checkpoint`` and ``convert_state_dict``, the message starting with the file.
    """
    from .hub import save_pretrained
    checkpoint = Path(checkpoint)
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; choose another folder or pass --overwrite")
    sd = load_checkpoint(checkpoint, inert_objects=inert_objects)
    source = f"`{checkpoint.name}` (sha256 {_sha256(checkpoint)[:16]})"
    try:
        model, report = convert_state_dict(
            extract_state_dict(sd, state_dict_key), model_name, model_kwargs, tag, allow_partial, source=source,
            allow_nonfinite=allow_nonfinite)
    except ConversionError as e:
        raise ConversionError(f"{checkpoint}: {e}") from e
    try:
        # the card of the tag (--tag), else the generic template: a converted model is not the tag's weights
        save_pretrained(model, output_dir, provenance=report.summary(), name=report.model_name, overwrite=overwrite)
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"cannot write {output_dir}: {type(e).__name__}: {e}") from e
    return output_dir, report


def get_args_parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    parser = argparse.ArgumentParser(
        's4nd-convert', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Convert a state-spaces/s4 S4ND checkpoint (ConvNeXt-S4ND 2-D/3-D, ViT-S4ND, isotropic) into an '
                    's4nd_* timm model and write a Hub folder (model.safetensors, config.json, README.md).',
        epilog="example: s4nd-convert convnext_s4nd.ckpt out/s4nd_convnext_tiny.in1k --tag in1k\n"
               "load:    timm.create_model('local-dir:out/s4nd_convnext_tiny.in1k', pretrained=True)")
    parser.add_argument('checkpoint', help='Lightning .ckpt, plain .pt/.pth state dict, or .safetensors')
    parser.add_argument('output', help='output folder (must not exist with content unless --overwrite)')
    parser.add_argument('--model', default=None, help='s4nd_* model name (default: inferred from the checkpoint)')
    parser.add_argument('--tag', default=None, help='pretrained tag for the config and card (e.g. in1k)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help='model arguments overriding the inferred ones (e.g. bandlimit=0.2 img_size=224); a '
                             'checkpoint that never ran a forward (l_kernel = 0) needs its img_size here')
    parser.add_argument('--state-dict-key', default=None, help="checkpoint entry with the tensors (default: "
                                                               "'state_dict' if present, else the whole file)")
    parser.add_argument('--allow-partial', action='store_true',
                        help='write the model even if tensors are missing, unmatched or mis-shaped (all listed)')
    parser.add_argument('--allow-nonfinite', action='store_true',
                        help='convert tensors that hold NaN or Inf values instead of refusing')
    parser.add_argument('--inert-objects', action='store_true',
                        help='load non-tensor pickled objects (e.g. Lightning hyper_parameters) as inert '
                             'placeholders instead of refusing; nothing from the file is executed')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``s4nd-convert``; returns the exit status (0 ok, 1 conversion error, 2 bad arguments).
    A user error is one message (no traceback); anything else is a bug and keeps its traceback."""
    parser = get_args_parser()
    try:
        args = parser.parse_args(argv)
    except ValueError as e:  # timm's ParseKwargs: an entry without '='
        print(f"s4nd-convert: error: --model-kwargs takes key=value entries ({e})", file=sys.stderr)
        return 2
    try:
        out, report = convert_checkpoint(
            args.checkpoint, args.output, model_name=args.model, model_kwargs=args.model_kwargs, tag=args.tag,
            allow_partial=args.allow_partial, state_dict_key=args.state_dict_key, inert_objects=args.inert_objects,
            overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite)
    except (ValueError, FileNotFoundError) as e:  # ConversionError is a ValueError
        print(f"s4nd-convert: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {out}; load it with timm.create_model('local-dir:{out}', pretrained=True) after import s4nd_timm")
    return 0


if __name__ == '__main__':
    sys.exit(main())
