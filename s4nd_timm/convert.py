"""``s4nd-convert``: reference S4ND checkpoints (state-spaces/s4) -> ``s4nd_*`` timm models in the Hub format.

Key map: docs/design.md §8 (reference state-dict layout) and the module-name maps in the
docstrings of ``s4nd_timm/models/*.py``; the output folder is written by ``s4nd_timm.hub.save_pretrained``.

Input: a PyTorch Lightning ``.ckpt`` (``ckpt['state_dict']``, backbone keys prefixed ``model.``) or a plain state
dict (``.pt``/``.pth``/``.safetensors``) under the reference's module names, for ConvNeXt-S4ND (2-D and 3-D),
ViT-S4ND and the isotropic CIFAR models; S4ND kernels in the reference's current (HEAD) names or the paper-era v3
names. Loaded with ``torch.load(weights_only=True)``: a pickle that needs anything but tensors and plain containers
is refused (``--inert-objects`` loads such objects, e.g. the Hydra config Lightning stores under
``hyper_parameters``, as inert placeholders; nothing from the file is ever executed).

Key map (reference -> here; the S4ND tensors keep the reference's HEAD names inside the layer):
    ConvNeXt  stem.stem.{0,1}                  -> stem.{conv,norm}          (patch stem)
              stem.stem.{D,kernel.*}           -> stem.conv.*               (S4ND stem, see below)
              stem.post_stem.{1,3}             -> stem.{proj,norm}
              stages.s.norm_layer              -> stages.s.downsample.norm
              stages.s.downsample.{s4conv,fc,conv} -> stages.s.downsample.{conv,proj,conv}
              stages.s.blocks.j.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}, head.{norm,fc}: unchanged
    ViT       patch_embed.proj: unchanged; blocks.{2i}.norm.norm -> blocks.i.norm1;
              blocks.{2i}.layer -> blocks.i.mixer (kernel.1 dropped: unused by the reference, docs/design.md §7.3);
              blocks.{2i+1}.norm.norm -> blocks.i.norm2; blocks.{2i+1}.layer.ff.{0.0,2} -> blocks.i.mlp.{fc1,fc2};
              norm.norm -> norm; head: unchanged
    isotropic encoder.0 (Linear) -> stem (1x1 conv); layers.i.norm[.norm] -> blocks.i.norm;
              layers.i.layer -> blocks.i.mixer; norm[.norm] -> norm; decoder.0.output_transform -> head
    S4ND      D, kernel.i.{inv_dt,A_real,A_imag,B,C,P,l_kernel}: unchanged; output_linear.0 -> output_linear
    S4ND v3   kernel.i.kernel.log_dt (H,) -> kernel.i.inv_dt (H, 1); .inv_w_real / .log_w_real / .inv_A_real ->
              .A_real; .w_imag / .A_imag (signed, <= 0) -> .A_imag = -value; .L -> .l_kernel; .B (S, M, 2) ->
              (1, S, M, 2); .B / .C / .P otherwise unchanged
ConvNeXt S4ND stem: the reference's full conv keeps kernel channels (2 out, in) with inv_dt per input channel; here
the layer is depthwise over (out, in) pairs (``S4NDStem``): inv_dt is repeated over the out channels, C (2 S, C_in,
M, 2) becomes (2, S C_in, M, 2) (forward half, backward half; pair o C_in + i) and D, unused by the reference, is 0.

DPLR checkpoints keep C̃ and l_kernel as they are (l_kernel = 0 means C is still the raw C; the layer builds C̃ when
loading). The model arguments are read from the checkpoint (kernel family from ``P``, d_state, depths, dims,
widths, stem and downsample types, S4ND channels, classes, and the base size from ``l_kernel``); ``--model`` and
``--model-kwargs`` override them (e.g. ``bandlimit``, which no checkpoint stores).

Every checkpoint tensor without a place in the model, every model tensor without a source and every shape (or
``l_kernel``) mismatch is reported by name; nothing is written unless all match, or ``--allow-partial`` is given
(the listed model tensors then keep their initialization). The output folder appears only when complete.
"""
import argparse
import ast
import hashlib
import math
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    'ConversionError', 'ConversionReport', 'load_checkpoint', 'extract_state_dict', 'detect_family',
    'map_reference_keys', 'infer_model', 'convert_state_dict', 'convert_checkpoint', 'main']

FAMILIES = ('convnext', 'vit', 'iso')
_KERNEL_NAMES = ('inv_dt', 'A_real', 'A_imag', 'B', 'C', 'P', 'l_kernel')
_DROP = 'drop'


class ConversionError(ValueError):
    """The checkpoint cannot be converted as asked; the message lists what does not match and what to do."""


@dataclass
class ConversionReport:
    """What a conversion did: source, target model and every key that did not map cleanly."""
    source: str = ''
    family: str = ''
    layout: str = 'head'
    model_name: str = ''
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    mapped: int = 0
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why)
    missing: List[str] = field(default_factory=list)  # model keys without a source
    unmatched: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why)
    mismatched: List[str] = field(default_factory=list)  # 'src (shape) -> dest expects (shape)'
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unmatched or self.mismatched)

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing: {len(self.missing)} model tensor(s) with no source in the checkpoint:")
            lines += [f"    {k}" for k in self.missing]
        if self.unmatched:
            lines.append(f"unmatched: {len(self.unmatched)} checkpoint tensor(s) with no place in the model:")
            lines += [f"    {k}{f'  ({why})' if why else ''}" for k, why in self.unmatched]
        if self.mismatched:
            lines.append(f"wrong shape: {len(self.mismatched)} tensor(s):")
            lines += [f"    {m}" for m in self.mismatched]
        return '\n'.join(lines)

    def summary(self) -> str:
        """Markdown for the model card (provenance) and the command's output."""
        args = ', '.join(f'{k}={v!r}' for k, v in sorted(self.model_kwargs.items()))
        lines = [
            f"Converted with `s4nd-convert` from the reference (state-spaces/s4) checkpoint {self.source} "
            f"({self.family}, {'paper-era v3' if self.layout == 'v3' else 'current (HEAD)'} kernel names) into "
            f"`{self.model_name}` ({args}); {self.mapped} tensors mapped."]
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


def load_checkpoint(path: Union[str, Path], inert_objects: bool = False) -> Any:
    """Read a checkpoint without executing code from it: ``torch.load(weights_only=True)`` (or safetensors).

    Args:
        path: .ckpt / .pt / .pth / .bin (torch) or .safetensors.
        inert_objects: load non-tensor objects the pickle names (classes, functions) as ``InertObject``
            placeholders, still under weights_only=True (only torch's allowlist and the placeholders can be called).
    Returns:
        The loaded object (a dict for every checkpoint this converter reads).
    Raises:
        ConversionError: unreadable file, or a pickle that needs objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return load_file(str(path), device='cpu')
    try:
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e)
        if not names:
            raise ConversionError(f"cannot read {path} with weights_only=True: {e}") from e
        if not inert_objects:
            raise ConversionError(
                f"refusing to unpickle {path}: besides tensors it references {names}, which a weights_only load does "
                f"not run (running them could execute arbitrary code). A Lightning checkpoint of the reference stores "
                f"its Hydra config (omegaconf) this way under 'hyper_parameters'; if that is all, pass "
                f"--inert-objects to load such objects as inert placeholders (nothing from the file is executed), or "
                f"save the plain state dict in an environment you trust: "
                f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'state_dict.pt').") from e
    except Exception as e:
        raise ConversionError(f"cannot read {path}: {type(e).__name__}: {e}") from e
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


# ----------------------------------------------------------------------------------------------------- key map
def _strip(key: str) -> str:
    """Reference name without Lightning's ``model.`` prefix (the backbone's attribute in the LightningModule)."""
    return key[len('model.'):] if key.startswith('model.') else key


def detect_family(sd: Mapping[str, Tensor]) -> str:
    """'convnext' (stages.*), 'vit' (patch_embed.*) or 'iso' (layers.*) from reference key names."""
    keys = [_strip(k) for k in sd]
    if any(k.startswith('stages.') for k in keys):
        return 'convnext'
    if any(k.startswith('patch_embed.') for k in keys):
        return 'vit'
    if any(k.startswith('layers.') for k in keys):
        return 'iso'
    raise ConversionError(
        f"cannot tell the model family from the keys (first: {keys[:5]}): expected stages.* (ConvNeXt-S4ND), "
        f"patch_embed.* (ViT-S4ND) or layers.* (isotropic); is this a state-spaces/s4 S4ND checkpoint?")


def _s4nd_inner(inner: str, t: Tensor) -> Optional[Tuple[str, Tensor, bool]]:
    """Reference S4ND tensor name (relative to the layer) -> (our name, tensor, is_v3), or None if unknown."""
    if inner == 'D':
        return 'D', t, False
    m = re.fullmatch(r'output_linear(?:\.0)?\.(weight|bias)', inner)
    if m:
        return f'output_linear.{m[1]}', t, False
    m = re.fullmatch(r'kernel\.(\d+)\.(\w+)', inner)
    if m and m[2] in _KERNEL_NAMES:
        return inner, (t.reshape(()).long() if m[2] == 'l_kernel' else t), False
    m = re.fullmatch(r'kernel\.(\d+)\.kernel\.(\w+)', inner)
    if not m:
        return None
    axis, name = m[1], m[2]
    if name == 'log_dt':
        return f'kernel.{axis}.inv_dt', (t.unsqueeze(-1) if t.dim() == 1 else t), True
    if name in ('inv_w_real', 'log_w_real', 'inv_A_real'):
        return f'kernel.{axis}.A_real', t, True
    if name in ('w_imag', 'A_imag'):
        return f'kernel.{axis}.A_imag', -t, True
    if name == 'L':
        return f'kernel.{axis}.l_kernel', t.reshape(()).long(), True
    if name == 'B':
        return f'kernel.{axis}.B', (t.unsqueeze(0) if t.dim() == 3 else t), True
    if name in ('C', 'P'):
        return f'kernel.{axis}.{name}', t, True
    return None


Rule = Tuple[str, Callable[[re.Match], Union[None, str, Tuple[str, str]]]]


def _rules(family: str) -> List[Rule]:
    """(regex on the reference key, fn(match) -> our key | ('s4nd', our layer prefix) | (_DROP, why) | None)."""
    same = lambda m: m[0]  # noqa: E731
    if family == 'convnext':
        return [
            (r'stem\.stem\.([01])\.(weight|bias)', lambda m: f"stem.{'conv' if m[1] == '0' else 'norm'}.{m[2]}"),
            (r'stem\.stem\.(?P<inner>.+)', lambda m: ('s4nd', 'stem.conv.')),
            (r'stem\.post_stem\.1\.(weight|bias)', lambda m: f'stem.proj.{m[1]}'),
            (r'stem\.post_stem\.3\.(weight|bias)', lambda m: f'stem.norm.{m[1]}'),
            (r'stages\.(\d+)\.norm_layer\.(weight|bias)', lambda m: f'stages.{m[1]}.downsample.norm.{m[2]}'),
            (r'stages\.(\d+)\.downsample\.s4conv\.(?P<inner>.+)',
             lambda m: ('s4nd', f'stages.{m[1]}.downsample.conv.')),
            (r'stages\.(\d+)\.downsample\.fc\.(weight|bias)', lambda m: f'stages.{m[1]}.downsample.proj.{m[2]}'),
            (r'stages\.(\d+)\.downsample\.conv\.(weight|bias)', same),
            (r'stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(?P<inner>.+)',
             lambda m: ('s4nd', f'stages.{m[1]}.blocks.{m[2]}.conv_dw.')),
            (r'stages\.(\d+)\.blocks\.(\d+)\.(norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)', same),
            (r'stages\.(\d+)\.blocks\.(\d+)\.gamma', same),
            (r'head\.(norm|fc)\.(weight|bias)', same),
        ]
    if family == 'vit':
        def norm(m):
            return f'blocks.{int(m[1]) // 2}.norm{1 + int(m[1]) % 2}.{m[2]}'

        def odd(dest):
            return lambda m: f'blocks.{int(m[1]) // 2}.{dest}.{m[2]}' if int(m[1]) % 2 else None

        def mixer(m):
            if int(m[1]) % 2:
                return None
            if re.match(r'kernel\.[1-9]\d*\.', m['inner']):
                return _DROP, 'second axis kernel of a 1-D sequence S4ND, unused by the reference (docs/design.md §7.3)'
            return 's4nd', f'blocks.{int(m[1]) // 2}.mixer.'
        return [
            (r'patch_embed\.proj\.(weight|bias)', same),
            (r'blocks\.(\d+)\.norm\.norm\.(weight|bias)', norm),
            (r'blocks\.(\d+)\.layer\.ff\.0\.0\.(weight|bias)', odd('mlp.fc1')),
            (r'blocks\.(\d+)\.layer\.ff\.2\.(weight|bias)', odd('mlp.fc2')),
            (r'blocks\.(\d+)\.layer\.(?P<inner>.+)', mixer),
            (r'norm\.norm\.(weight|bias)', lambda m: f'norm.{m[1]}'),
            (r'head\.(weight|bias)', same),
        ]
    if family == 'iso':
        return [
            (r'encoder\.0\.(weight|bias)', lambda m: f'stem.{m[1]}'),
            (r'layers\.(\d+)\.norm(?:\.norm)?\.(weight|bias)', lambda m: f'blocks.{m[1]}.norm.{m[2]}'),
            (r'layers\.(\d+)\.layer\.(?P<inner>.+)', lambda m: ('s4nd', f'blocks.{m[1]}.mixer.')),
            (r'norm(?:\.norm)?\.(weight|bias)', lambda m: f'norm.{m[1]}'),
            (r'decoder\.0\.output_transform\.(weight|bias)', lambda m: f'head.{m[1]}'),
        ]
    raise ConversionError(f"unknown family {family!r}; expected one of {FAMILIES}")


def map_reference_keys(
        sd: Mapping[str, Tensor], family: Optional[str] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, str], ConversionReport]:
    """Rename (and reshape where the layouts differ) reference tensors to this package's names.

    Args:
        sd: reference state dict (``extract_state_dict``; Lightning's ``model.`` prefix optional).
        family: 'convnext', 'vit' or 'iso' (default: ``detect_family``).
    Returns:
        (tensors under our names, our name -> reference name, report with dropped / unmatched keys and notes).
    """
    family = family or detect_family(sd)
    report = ConversionReport(family=family)
    rules = [(re.compile(p), fn) for p, fn in _rules(family)]
    out: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}
    v3 = False
    for key, t in sd.items():
        dest = None
        for pattern, fn in rules:
            m = pattern.fullmatch(_strip(key))
            if m is None:
                continue
            dest = fn(m)
            if isinstance(dest, tuple) and dest[0] == 's4nd':
                inner = _s4nd_inner(m['inner'], t)
                if inner is None:
                    dest = None
                else:
                    dest, t, is_v3 = dest[1] + inner[0], inner[1], inner[2]
                    v3 = v3 or is_v3
            break
        if isinstance(dest, tuple) and dest[0] == _DROP:
            report.dropped.append((key, dest[1]))
            continue
        if dest is None:
            report.unmatched.append((key, 'no rule for this name'))
            continue
        if dest in out:
            report.unmatched.append((key, f'maps to {dest}, already filled by {origin[dest]}'))
            continue
        if family == 'iso' and dest == 'stem.weight' and t.dim() == 2:
            t = t[:, :, None, None]  # Linear (d, C) -> 1x1 conv (d, C, 1, 1)
        out[dest], origin[dest] = t, key
    report.layout = 'v3' if v3 else 'head'
    if family == 'convnext' and any(k.startswith('stem.conv.kernel.') for k in out):
        _expand_s4nd_stem(out, origin, report)
    return out, origin, report


def _expand_s4nd_stem(out: Dict[str, Tensor], origin: Dict[str, str], report: ConversionReport) -> None:
    """Reference S4ND stem (full conv, kernel channels (2 S, C_in)) -> our depthwise (out, in)-pair layer."""
    c_keys = sorted(k for k in out if re.fullmatch(r'stem\.conv\.kernel\.\d+\.C', k))
    if not c_keys:
        return
    ck, c_in = out[c_keys[0]].shape[:2]
    stem_chs = out['stem.proj.weight'].shape[1] if 'stem.proj.weight' in out else ck // 2
    if ck != 2 * stem_chs:
        report.mismatched.append(
            f"{origin[c_keys[0]]} {tuple(out[c_keys[0]].shape)}: the S4ND stem needs 2 x stem channels = "
            f"{2 * stem_chs} kernel channels (bidirectional, one per output channel)")
        return
    for key in [k for k in out if k.startswith('stem.conv.')]:
        t, name = out[key], key.rsplit('.', 1)[-1]
        if name == 'inv_dt':
            out[key] = t.repeat(stem_chs, 1)  # (C_in, 1) -> (S C_in, 1), pair o C_in + i
        elif name == 'C':
            out[key] = t.reshape(2, stem_chs * t.shape[1], *t.shape[2:])  # (2 S, C_in, M, 2) -> (2, S C_in, M, 2)
        elif name == 'D':
            out[key] = torch.zeros(t.shape[0], t.shape[1] * stem_chs, dtype=t.dtype)
        elif name in ('A_real', 'B', 'P'):  # the (A, B, P) sets are tiled over channels h mod n_ssm
            n_ssm = t.shape[0] if name == 'A_real' else t.shape[1]
            if c_in % n_ssm:
                report.mismatched.append(
                    f"{origin[key]} {tuple(t.shape)}: n_ssm={n_ssm} must divide the stem's {c_in} input channels "
                    f"for pair o C_in + i to keep input channel i's set")
    if 'stem.conv.D' in out:
        report.notes.append(f"`{origin['stem.conv.D']}` is unused by the reference's full-conv stem; `stem.conv.D` = 0")


# ------------------------------------------------------------------------------------------------- model args
_CONVNEXT_SIZES = {
    's4nd_convnext_micro': ((3, 3, 3, 3), (64, 128, 256, 512)),
    's4nd_convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    's4nd_convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    's4nd_convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
_VIT_SIZES = {'s4nd_vit_tiny_patch16': 192, 's4nd_vit_small_patch16': 384, 's4nd_vit_base_patch16': 768}
_ISO_SIZES = {'s4nd_iso_cifar': (256, 6), 's4nd_iso_cifar_small': (64, 4)}


def _l_kernel(out: Mapping[str, Tensor], prefix: str, axis: int) -> int:
    t = out.get(f'{prefix}kernel.{axis}.l_kernel')
    return int(t) if t is not None else 0


def infer_model(
        out: Mapping[str, Tensor], family: str, report: Optional[ConversionReport] = None,
) -> Tuple[str, Dict[str, Any]]:
    """Registered model name and constructor arguments that fit tensors under our names.

    Returns:
        (model name, kwargs for ``timm.create_model``).
    """
    notes = report.notes if report is not None else []
    a_real = [t for k, t in out.items() if re.search(r'\.kernel\.\d+\.A_real$', k)]
    if not a_real:
        raise ConversionError("no S4ND kernel tensors (kernel.<i>.A_real) found; is this an S4ND checkpoint?")
    dplr = any(re.search(r'\.kernel\.\d+\.P$', k) for k in out)
    kw: Dict[str, Any] = dict(d_state=2 * a_real[0].shape[-1], s4nd_mode='dplr' if dplr else 'diag')

    def blocks(pattern):
        found = {}
        for k in out:
            m = re.match(pattern, k)
            if m:
                found.setdefault(int(m[1]), set()).add(int(m[2]))
        return found

    def base_size(prefix, axes, scale):
        sizes = [_l_kernel(out, prefix, a) for a in axes]
        if all(sizes):
            return [s * scale for s in sizes]
        notes.append(f"the base size is not in the checkpoint ({'l_kernel = 0' if dplr else 'diagonal kernels'}): "
                     f"the model's default is used; pass --model-kwargs img_size=N if it was trained at another size")
        return None

    def dim(keys, axis=0):
        """Size of ``axis`` of the first of ``keys`` present (None if none is: the comparison reports it)."""
        for key in keys:
            if key in out:
                return out[key].shape[axis]
        return None

    def put(**values):
        kw.update({k: v for k, v in values.items() if v is not None})

    def depth_of(pattern):
        found = [int(m[1]) for k in out if (m := re.match(pattern, k))]
        return 1 + max(found) if found else None

    if family == 'convnext':
        stages = blocks(r'stages\.(\d+)\.blocks\.(\d+)\.')
        if not stages or sorted(stages) != list(range(len(stages))):
            raise ConversionError(
                f"ConvNeXt checkpoint with stages {sorted(stages)}: expected stages 0..n-1 with blocks")
        depths = tuple(max(stages[s]) + 1 for s in sorted(stages))
        dims = tuple(dim([f'stages.{s}.blocks.0.{n}' for n in ('norm.weight', 'gamma', 'mlp.fc2.bias')])
                     for s in sorted(stages))
        n_axes = depth_of(r'stages\.\d+\.blocks\.\d+\.conv_dw\.kernel\.(\d+)\.') or 2
        video = n_axes == 3
        fc1 = dim(['stages.0.blocks.0.mlp.fc1.weight'])
        put(s4nd_init='fourier' if dplr else 'legs',
            stem_type='s4nd' if any(k.startswith('stem.proj.') for k in out) else 'patch',
            downsample_type='s4nd' if any('.downsample.proj.' in k for k in out) else 'conv',
            mlp_ratio=fc1 / dims[0] if fc1 and dims[0] else None)
        if not any(k.endswith('.gamma') for k in out):
            kw['ls_init_value'] = None
        patch = 4
        if kw['stem_type'] == 'patch' and 'stem.conv.weight' in out:
            w = out['stem.conv.weight']
            patch = w.shape[-1]
            put(in_chans=w.shape[1], patch_size=patch, temporal_patch_size=w.shape[2] if video else None)
        elif kw['stem_type'] == 's4nd':
            stem_chs = dim(['stem.proj.weight'], 1)
            inv_dt = dim(['stem.conv.kernel.0.inv_dt'])
            put(stem_chs=stem_chs, in_chans=inv_dt // stem_chs if inv_dt and stem_chs else None,
                stem_l_max=_l_kernel(out, 'stem.conv.', 0) or None)
        put(num_classes=dim(['head.fc.weight', 'head.fc.bias']) or 0)
        prefix = 'stages.0.blocks.0.conv_dw.'
        size = base_size(prefix, (n_axes - 2, n_axes - 1), patch)
        if size:
            kw['img_size'] = size[0] if size[0] == size[1] else tuple(size)
        if video:
            frames = _l_kernel(out, prefix, 0)
            if frames:
                kw['num_frames'] = frames * kw.get('temporal_patch_size', 2)
            else:
                notes.append("the clip length is not in the checkpoint: the model's default num_frames is used")
            return 's4nd_convnext_tiny_3d', dict(kw, depths=depths, dims=dims)
        for name, (d, c) in _CONVNEXT_SIZES.items():
            if (d, c) == (depths, dims):
                return name, kw
        return 's4nd_convnext_tiny', dict(kw, depths=depths, dims=dims)

    if family == 'vit':
        embed_dim = dim(['patch_embed.proj.weight', 'norm.weight', 'blocks.0.norm1.weight'])
        patch = dim(['patch_embed.proj.weight'], -1)
        depth = depth_of(r'blocks\.(\d+)\.')
        fc1 = dim(['blocks.0.mlp.fc1.weight'])
        put(s4nd_init='legs', in_chans=dim(['patch_embed.proj.weight'], 1), patch_size=patch, depth=depth,
            embed_dim=embed_dim, mlp_ratio=fc1 / embed_dim if fc1 and embed_dim else None,
            s4nd_channels=dim(['blocks.0.mixer.D']), num_classes=dim(['head.weight', 'head.bias']) or 0)
        length = _l_kernel(out, 'blocks.0.mixer.', 0)
        if length:
            side = math.isqrt(length)
            if side * side == length:
                kw['img_size'] = side * (patch or 16)
            else:
                notes.append(f"l_kernel={length} patches is not a square: pass --model-kwargs img_size=(H, W)")
        else:
            base_size('blocks.0.mixer.', (0,), 1)
        for name, width in _VIT_SIZES.items():
            if width == embed_dim and depth == 12:
                return name, {k: v for k, v in kw.items() if k not in ('embed_dim', 'depth')}
        return 's4nd_vit_base_patch16', kw

    if family == 'iso':
        d_model = dim(['stem.weight', 'stem.bias', 'norm.weight'])
        depth = depth_of(r'blocks\.(\d+)\.')
        put(s4nd_init='legs', in_chans=dim(['stem.weight'], 1), mixer='s4nd',
            num_classes=dim(['head.weight', 'head.bias']) or 0)
        size = base_size('blocks.0.mixer.', (0, 1), 1)
        if size:
            kw['img_size'] = size[0] if size[0] == size[1] else tuple(size)
        for name, (d, n) in _ISO_SIZES.items():
            if (d, n) == (d_model, depth):
                return name, kw
        return 's4nd_iso_cifar', {k: v for k, v in dict(kw, d_model=d_model, depth=depth).items() if v is not None}
    raise ConversionError(f"unknown family {family!r}; expected one of {FAMILIES}")


# --------------------------------------------------------------------------------------------------- conversion
def convert_state_dict(
        sd: Mapping[str, Tensor],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        tag: Optional[str] = None,
        allow_partial: bool = False,
        family: Optional[str] = None,
        source: str = 'a state dict',
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
    Returns:
        (model in eval mode, report).
    Raises:
        ConversionError: any missing / unmatched / mis-shaped tensor (unless allow_partial), a DPLR checkpoint for a
            diagonal-kernel model, or an unknown layout; the message lists every offending key.
    """
    import timm
    out, origin, report = map_reference_keys(sd, family)
    report.source = source
    name, kwargs = infer_model(out, report.family, report)
    name = model_name or name
    kwargs.update(model_kwargs or {})
    report.model_name, report.model_kwargs = f'{name}.{tag}' if tag else name, dict(kwargs)
    try:
        model = timm.create_model(report.model_name, **kwargs)
    except Exception as e:
        raise ConversionError(
            f"cannot build {report.model_name} with {kwargs}: {type(e).__name__}: {e}. Pass --model / --model-kwargs "
            f"to fix the arguments read from the checkpoint.") from e
    target = model.state_dict()
    dplr_into_diag = sorted(k[:-2] for k in out if re.search(r'\.kernel\.\d+\.P$', k)
                            and k not in target and k[:-2] + '.C' in target)
    if dplr_into_diag:
        layer = dplr_into_diag[0]
        raise ConversionError(
            f"{origin.get(layer + '.P', layer)} is a DPLR (S4) kernel, but {report.model_name} was built with diagonal "
            f"kernels (s4nd_mode={kwargs.get('s4nd_mode')!r}) at {layer}: a DPLR checkpoint stores C̃ = C(I - Ā^L) "
            f"in C, which a diagonal kernel cannot use (docs/design.md §8). Build it with --model-kwargs s4nd_mode=dplr.")
    load = {}
    for key, t in out.items():
        src = origin[key]
        if key not in target:
            report.unmatched.append((src, f'-> {key}, not a tensor of {report.model_name}'))
            continue
        want = target[key]
        t = _tile_ssm_sets(key, t, want, report)
        if tuple(t.shape) != tuple(want.shape):
            report.mismatched.append(f"{src} {tuple(t.shape)} -> {key} expects {tuple(want.shape)}")
            continue
        if key.endswith('.l_kernel') and int(t) not in (0, int(want)):
            report.mismatched.append(
                f"{src} = {int(t)} -> {key}: this model's kernel is built for {int(want)} taps (l_max from img_size / "
                f"num_frames / stem_l_max); pass the matching size with --model-kwargs")
            continue
        load[key] = t.to(want.dtype)
    report.missing = [k for k in target if k not in out]
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


def _tile_ssm_sets(key: str, t: Tensor, want: Tensor, report: ConversionReport) -> Tensor:
    """(A, B, P) stored for S sets where the model keeps S' = k S (e.g. the 3-D time kernels: one set per
    feature): feature h uses set h mod S, so tiling the S sets k times is the same system, exactly."""
    name = key.rsplit('.', 1)[-1]
    axis = {'A_real': 0, 'A_imag': 0, 'B': 1, 'P': 1}.get(name)
    if axis is None or t.dim() != want.dim() or t.shape == want.shape:
        return t
    s, s_new = t.shape[axis], want.shape[axis]
    others = [i for i in range(t.dim()) if i != axis]
    if s_new <= s or s_new % s or any(t.shape[i] != want.shape[i] for i in others):
        return t
    reps = [1] * t.dim()
    reps[axis] = s_new // s
    note = f"n_ssm {s} -> {s_new} (the model keeps one (A, B, P) set per feature there): identical sets tiled"
    if note not in report.notes:
        report.notes.append(note)
    return t.repeat(*reps)


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
) -> Tuple[Path, ConversionReport]:
    """Convert a reference checkpoint file and write a Hub folder (model.safetensors, config.json, README.md).

    The folder loads with ``timm.create_model('local-dir:<output_dir>', pretrained=True)``. It is written through a
    temporary folder: after an error nothing is left at ``output_dir``. Arguments as ``convert_state_dict``,
    ``load_checkpoint`` and ``s4nd_timm.hub.save_pretrained``.

    Returns:
        (output folder, report).
    """
    from .hub import save_pretrained
    checkpoint = Path(checkpoint)
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; choose another folder or pass --overwrite")
    sd = extract_state_dict(load_checkpoint(checkpoint, inert_objects=inert_objects), state_dict_key)
    source = f"`{checkpoint.name}` (sha256 {_sha256(checkpoint)[:16]})"
    model, report = convert_state_dict(sd, model_name, model_kwargs, tag, allow_partial, source=source)
    try:
        # the card of the tag (--tag), else the generic template: a converted model is not the tag's weights
        save_pretrained(model, output_dir, provenance=report.summary(), name=report.model_name, overwrite=overwrite)
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"cannot write {output_dir}: {type(e).__name__}: {e}") from e
    return output_dir, report


def _parse_kwargs(items: Sequence[str]) -> Dict[str, Any]:
    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConversionError(f"--model-kwargs entries are key=value; got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def get_args_parser() -> argparse.ArgumentParser:
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
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='model arguments overriding the inferred ones (e.g. bandlimit=0.2 img_size=224)')
    parser.add_argument('--state-dict-key', default=None, help="checkpoint entry with the tensors (default: "
                                                               "'state_dict' if present, else the whole file)")
    parser.add_argument('--allow-partial', action='store_true',
                        help='write the model even if tensors are missing, unmatched or mis-shaped (all listed)')
    parser.add_argument('--inert-objects', action='store_true',
                        help='load non-tensor pickled objects (e.g. Lightning hyper_parameters) as inert '
                             'placeholders instead of refusing; nothing from the file is executed')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``s4nd-convert``; returns the exit status (0 ok, 1 conversion error)."""
    args = get_args_parser().parse_args(argv)
    try:
        out, report = convert_checkpoint(
            args.checkpoint, args.output, model_name=args.model, model_kwargs=_parse_kwargs(args.model_kwargs),
            tag=args.tag, allow_partial=args.allow_partial, state_dict_key=args.state_dict_key,
            inert_objects=args.inert_objects, overwrite=args.overwrite)
    except ConversionError as e:
        print(f"s4nd-convert: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {out}; load it with timm.create_model('local-dir:{out}', pretrained=True) after import s4nd_timm")
    return 0


if __name__ == '__main__':
    sys.exit(main())
