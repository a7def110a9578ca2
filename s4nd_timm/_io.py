"""File helpers shared by the package: one atomic writer and one safe ``torch.load``.

``atomic_write``: the bytes reach ``path`` in one step. They are written to a temporary file in the same
folder, flushed and fsynced, then ``os.replace``d over ``path``; the old file is never removed first, so a
kill at any moment leaves either the old complete file or the new complete file (plus, at worst, a stray
temporary ``.<name>.tmp-*`` that ``remove_stale_temporaries`` clears).

``safe_torch_load``: ``torch.load(weights_only=True)`` admitting ``argparse.Namespace`` (the flags timm and
s4nd-train store in checkpoints) and nothing else that could run code; any failure to read becomes a
``ValueError`` naming the file.
"""
import argparse
import glob
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Union

import torch

__all__ = ['atomic_write', 'atomic_write_text', 'atomic_torch_save', 'atomic_link', 'safe_torch_load',
           'remove_stale_temporaries']

TMP_MARK = '.tmp-'


def _temporary(path: str) -> str:
    """A new empty file beside ``path`` (same folder, so a rename is atomic), with the umask's permissions."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}{TMP_MARK}', dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None]) -> None:
    """Call ``write(binary file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = os.fspath(path)
    tmp = _temporary(path)
    try:
        with open(tmp, 'wb') as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """``text`` (UTF-8) to ``path`` in one step (see ``atomic_write``)."""
    atomic_write(path, lambda fh: fh.write(text.encode('utf-8')))


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj)`` to ``path`` in one step (see ``atomic_write``)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_link(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src`` in one step: a hard link (a copy where links are unsupported)
    under a temporary name, renamed over ``dst``."""
    tmp = _temporary(dst)
    try:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(folder: str) -> None:
    """Delete temporaries ``atomic_write`` left in ``folder`` when a process was killed mid-write."""
    for path in glob.glob(os.path.join(glob.escape(folder), f'.*{TMP_MARK}*')):
        os.remove(path)


def safe_torch_load(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with ``argparse.Namespace`` allowed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, when it is not a torch file, is truncated, or holds objects other than
            tensors, plain Python values and ``argparse.Namespace`` (objects that could run code are refused
            before anything runs).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: refused to load: it holds objects other than tensors and plain values "
                         f"({first[:300]}). Only load checkpoints you trust; re-save the weights as a state dict "
                         "or safetensors.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:300]}); "
                         "it may be truncated or of another format.") from None
