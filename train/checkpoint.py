"""Crash-safe checkpoints on top of timm's ``CheckpointSaver``, and exact resume.

timm's saver already writes ``last`` / ``recovery-<epoch>-<batch>`` through a temporary file and
``os.replace``; ``ResumableSaver._save`` adds an fsync before that rename (a power cut cannot leave a
renamed but empty file) and the state timm leaves out but an exact restart needs: scheduler, global
update count, position in the epoch, every rank's RNG states, the metrics history and the saver's own
bookkeeping (ranked checkpoint files, best metric). Keys timm reads (``state_dict``, ``state_dict_ema``,
``optimizer``, ``epoch``, ``args``, ``amp_scaler``, ``metric``) keep timm's meaning, so
``timm.models.load_checkpoint`` and ``create_model(checkpoint_path=...)`` load these files; everything is
tensors and plain Python values, loadable with ``weights_only=True``.

``progress`` in a checkpoint: {'epoch': epoch to run next, 'batch': batches of it already done,
'num_updates': optimizer steps so far}. An end-of-epoch checkpoint has batch 0 of the next epoch.
"""
import glob
import os
import random
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from timm.utils import CheckpointSaver, get_state_dict

__all__ = ['ResumableSaver', 'find_resume_checkpoint', 'load_training_checkpoint', 'rng_state', 'set_rng_state',
           'gather_rank_states', 'atomic_write_text']

EXTENSION = '.pth.tar'


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never a partial file)."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    """This process's python, numpy, torch CPU (and CUDA) RNG states as tensors / plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class ResumableSaver(CheckpointSaver):
    """timm ``CheckpointSaver`` whose files also carry ``extra_state()`` and the saver's bookkeeping.

    Args:
        extra_state: called at each save; returns the additional entries (progress, scheduler, rng, history).
        Other args: as ``timm.utils.CheckpointSaver``.
    """

    def __init__(self, *args, extra_state: Callable[[], Dict[str, Any]], **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state

    def _save(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        state = {
            'epoch': epoch,
            'arch': self.args.model if self.args is not None else type(self.model).__name__.lower(),
            'state_dict': get_state_dict(self.model, self.unwrap_fn),
            'optimizer': self.optimizer.state_dict(),
            'version': 2,
            'saver': {'checkpoint_files': [(os.path.basename(f), m) for f, m in self.checkpoint_files],
                      'best_metric': self.best_metric, 'best_epoch': self.best_epoch, 'pending': (epoch, metric)},
        }
        if self.args is not None:
            state['args'] = self.args
        if self.model_ema is not None:
            state['state_dict_ema'] = get_state_dict(self.model_ema, self.unwrap_fn)
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if metric is not None:
            state['metric'] = metric
        state.update(self.extra_state())
        with open(save_path, 'wb') as fh:  # save_path is timm's temporary name, renamed by the caller
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    def restore(self, saver_state: Dict[str, Any]) -> None:
        """Continue ranking and pruning epoch checkpoints as the interrupted run would have."""
        files = [(os.path.join(self.checkpoint_dir, f), m) for f, m in saver_state['checkpoint_files']
                 if os.path.exists(os.path.join(self.checkpoint_dir, f))]
        self.best_metric, self.best_epoch = saver_state['best_metric'], saver_state['best_epoch']
        epoch, metric = saver_state['pending']
        pending = os.path.join(self.checkpoint_dir, f'{self.save_prefix}-{epoch}{self.extension}')
        if epoch is not None and os.path.exists(pending) and pending not in [f for f, _ in files]:
            files.append((pending, metric))
            if metric is not None and (self.best_metric is None or self.cmp(metric, self.best_metric)):
                self.best_metric, self.best_epoch = metric, epoch
        self.checkpoint_files = sorted(files, key=lambda fm: fm[1], reverse=not self.decreasing)

    def remove_recovery(self) -> None:
        """Delete this run's recovery checkpoints (called once an epoch checkpoint supersedes them)."""
        for path in glob.glob(os.path.join(self.recovery_dir, f'{self.recovery_prefix}-*{self.extension}')):
            os.remove(path)
        self.curr_recovery_file = self.prev_recovery_file = ''


def find_resume_checkpoint(path: str) -> str:
    """A checkpoint file, or for a run folder its newest complete checkpoint (last / recovery-*)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"--resume {path!r} is neither a checkpoint file nor a run folder")
    candidates = glob.glob(os.path.join(path, 'recovery-*' + EXTENSION)) + \
        [p for p in [os.path.join(path, 'last' + EXTENSION)] if os.path.isfile(p)]
    if not candidates:
        raise ValueError(f"no checkpoint to resume in {path!r} (expected last{EXTENSION} or recovery-*{EXTENSION}); "
                         "start a new run without --resume")
    return max(candidates, key=os.path.getmtime)


def load_training_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint written by ``ResumableSaver`` (tensors and plain values only) onto the CPU."""
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    if 'progress' not in ckpt:
        raise ValueError(f"{path} is not an s4nd-train checkpoint (no 'progress' entry). To start from its weights "
                         "use --initial-checkpoint instead of --resume.")
    return ckpt


def gather_rank_states(distributed: bool, **state: Any) -> List[Dict[str, Any]]:
    """[{'rng': rng_state(), **state}] of every rank, in rank order (a collective: every rank must call it)."""
    mine = dict(rng=rng_state(), **state)
    if not distributed:
        return [mine]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, mine)
    return out
