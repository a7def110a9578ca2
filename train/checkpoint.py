"""Crash-safe checkpoints on top of timm's ``CheckpointSaver``, and exact resume.

Every file is written in one atomic step (``s4nd_timm._io``: temporary file, fsync, rename over the old
one, which is never removed first). An epoch's files are written in the order
``checkpoint-<epoch>`` / ``model_best`` (hard links of one write), pruning of the worst epoch files, then
``last``; a kill between any two steps leaves complete files from which ``load_resume_checkpoint`` resumes
(it takes the newest readable one of last / recovery-* / checkpoint-* / model_best and warns when it has
to skip an unreadable newer one). Checkpoints also carry what timm leaves out but an exact restart needs:
scheduler, global update count, position in the epoch, every rank's RNG states, the metrics history and the
saver's own bookkeeping (ranked checkpoint files, best metric). Keys timm reads (``state_dict``,
``state_dict_ema``, ``optimizer``, ``epoch``, ``args``, ``amp_scaler``, ``metric``) keep timm's meaning, so
``timm.models.load_checkpoint`` and ``create_model(checkpoint_path=...)`` load these files; everything is
tensors and plain Python values, loadable with ``weights_only=True``.

``progress`` in a checkpoint: {'epoch': epoch to run next, 'batch': batches of it already done,
'num_updates': optimizer steps so far}. An end-of-epoch checkpoint has batch 0 of the next epoch.
"""
import glob
import logging
import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from timm.utils import CheckpointSaver, get_state_dict

from s4nd_timm._io import atomic_link, atomic_torch_save, safe_torch_load

__all__ = ['ResumableSaver', 'resume_candidates', 'load_resume_checkpoint', 'load_training_checkpoint', 'rng_state',
           'set_rng_state', 'gather_rank_states']

EXTENSION = '.pth.tar'
_logger = logging.getLogger('train')


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

    def _state(self, epoch: int, metric: Optional[float]) -> Dict[str, Any]:
        state = {
            'epoch': epoch,
            'arch': self.args.model if self.args is not None else type(self.model).__name__.lower(),
            'state_dict': get_state_dict(self.model, self.unwrap_fn),
            'optimizer': self.optimizer.state_dict(),
            'version': 2,
            'saver': {'checkpoint_files': [(os.path.basename(f), m) for f, m in self.checkpoint_files],
                      'best_metric': self.best_metric, 'best_epoch': self.best_epoch},
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
        return state

    def save_checkpoint(self, epoch: int, metric: float) -> Tuple[float, int]:
        """Save the state as ``last``, and as ``checkpoint-<epoch>`` when it ranks among the ``max_history``
        best (ties keep the earlier epoch) and as ``model_best`` when it is the best; returns (best metric,
        its epoch). The bookkeeping saved in the file is the one after this save."""
        path = os.path.join(self.checkpoint_dir, f'{self.save_prefix}-{epoch}{self.extension}')
        files = list(self.checkpoint_files)
        keep = len(files) < self.max_history or self.cmp(metric, files[-1][1])
        if keep:
            files = sorted(files + [(path, metric)], key=lambda fm: fm[1], reverse=not self.decreasing)
        files, dropped = files[:self.max_history], files[self.max_history:]
        is_best = self.best_metric is None or self.cmp(metric, self.best_metric)
        self.checkpoint_files = files
        if is_best:
            self.best_metric, self.best_epoch = metric, epoch
        state = self._state(epoch, metric)
        last = os.path.join(self.checkpoint_dir, 'last' + self.extension)
        targets = ([path] if keep else []) + ([os.path.join(self.checkpoint_dir, 'model_best' + self.extension)]
                                              if is_best else []) + [last]
        atomic_torch_save(state, targets[0])
        for target in targets[1:-1]:
            atomic_link(targets[0], target)
        for old, _ in dropped:
            if os.path.exists(old):
                os.remove(old)
        if len(targets) > 1:
            atomic_link(targets[0], last)
        return self.best_metric, self.best_epoch

    def save_recovery(self, epoch: int, batch_idx: int = 0) -> None:
        """``recovery-<epoch>-<batch>``; the recovery file before the previous one is removed."""
        path = os.path.join(self.recovery_dir, f'{self.recovery_prefix}-{epoch}-{batch_idx}{self.extension}')
        atomic_torch_save(self._state(epoch, None), path)
        if self.prev_recovery_file and os.path.exists(self.prev_recovery_file):
            os.remove(self.prev_recovery_file)
        self.prev_recovery_file, self.curr_recovery_file = self.curr_recovery_file, path

    def restore(self, saver_state: Dict[str, Any]) -> None:
        """Continue ranking and pruning epoch checkpoints as the interrupted run would have: epoch files the
        saved bookkeeping does not list (a kill before their pruning) are removed."""
        files = [(os.path.join(self.checkpoint_dir, f), m) for f, m in saver_state['checkpoint_files']
                 if os.path.exists(os.path.join(self.checkpoint_dir, f))]
        listed = {f for f, _ in files}
        for path in glob.glob(os.path.join(glob.escape(self.checkpoint_dir), f'{self.save_prefix}-*{self.extension}')):
            if path not in listed:
                os.remove(path)
        self.best_metric, self.best_epoch = saver_state['best_metric'], saver_state['best_epoch']
        self.checkpoint_files = files

    def remove_recovery(self) -> None:
        """Delete this run's recovery checkpoints (called once an epoch checkpoint supersedes them)."""
        for path in glob.glob(os.path.join(self.recovery_dir, f'{self.recovery_prefix}-*{self.extension}')):
            os.remove(path)
        self.curr_recovery_file = self.prev_recovery_file = ''


def resume_candidates(path: str) -> List[str]:
    """A checkpoint file, or a run folder's checkpoints newest first (last, recovery-*, checkpoint-*,
    model_best by modification time)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"--resume {path!r} is neither a checkpoint file nor a run folder")
    names = ['last', 'recovery-*', 'checkpoint-*', 'model_best']
    found = {p for n in names for p in glob.glob(os.path.join(glob.escape(path), n + EXTENSION))}
    if not found:
        raise ValueError(f"no checkpoint to resume in {path!r} (expected last{EXTENSION}, recovery-*{EXTENSION} or "
                         f"checkpoint-*{EXTENSION}); start a new run without --resume")
    return sorted(found, key=os.path.getmtime, reverse=True)


def load_resume_checkpoint(path: str) -> Tuple[str, Dict[str, Any]]:
    """(file, checkpoint) of the newest readable ``resume_candidates(path)``; each unreadable newer file is
    named in a warning. ValueError when none can be read (or when ``path`` is a file that cannot)."""
    candidates = resume_candidates(path)
    errors = []
    for candidate in candidates:
        try:
            ckpt = load_training_checkpoint(candidate)
        except ValueError as e:
            if len(candidates) == 1:
                raise
            errors.append(str(e))
            _logger.warning(f'cannot resume from {candidate} ({e}); trying the next newest checkpoint')
            continue
        return candidate, ckpt
    raise ValueError(f"no readable checkpoint in {path!r}: {'; '.join(errors)}")


def load_training_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint written by ``ResumableSaver`` (tensors and plain values only) onto the CPU."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or 'progress' not in ckpt:
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
