"""Train / evaluate loops, the resolution (rate) hook, progress and metric logs.

Loop structure as timm's ``train.py`` (``train_one_epoch`` / ``validate``): gradient accumulation with DDP ``no_sync``, AMP through timm's
``NativeScaler``, EMA, per-update scheduler steps, a callback after every optimizer step (recovery
checkpoints), accounting of unreadable items that were skipped, sums reduced over ranks once per epoch.

Resolution (docs/design.md §5): a batch arrives at the base resolution; ``resize_for_rate`` resizes it to
``round(size / rate)`` (bilinear, antialiased) and ``forward_at_rate`` passes ``rate`` to models whose
``forward`` takes it (S4ND models), others just see the smaller input.
"""
import inspect
import logging
import math
import os
import sys
import time
import traceback
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['accepts_rate', 'resize_for_rate', 'forward_at_rate', 'train_one_epoch', 'evaluate', 'format_seconds',
           'setup_console_logging', 'run_cli']

_logger = logging.getLogger('train')


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at emit time (pytest and notebooks swap them)."""

    def __init__(self, to: str):
        super().__init__()
        self.to = to

    @property
    def stream(self):
        return getattr(sys, self.to)

    @stream.setter
    def stream(self, value):
        pass


def setup_console_logging(level: int = logging.INFO, to: str = 'stderr') -> None:
    """One message-only console handler on the root logger, replaced (never duplicated) on each call.

    Progress lines go through loggers that propagate to the root, so callers (and pytest's ``caplog``)
    see every record; ``to`` is ``'stderr'`` (training) or ``'stdout'`` (tables and the main job).
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ConsoleHandler)]:
        root.removeHandler(handler)
    handler = _ConsoleHandler(to)
    handler.setFormatter(logging.Formatter('%(message)s'))
    root.addHandler(handler)
    root.setLevel(level)



USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_cli(main: Callable[[], Any], prog: str) -> None:
    """Console entry point around ``main()``.

    A user error (``USER_ERRORS``, or pretrained weights that cannot be loaded) prints one line
    ``<prog>: error: <message>`` to stderr and exits with status 2, without a traceback; ``--debug`` on the
    command line (taken out before ``main`` parses it) or ``S4ND_DEBUG=1`` shows the traceback as well.
    Any other exception is a bug and keeps its traceback.
    """
    from s4nd_timm.hub import PretrainedWeightsError
    debug = os.environ.get('S4ND_DEBUG', '') not in ('', '0') or '--debug' in sys.argv[1:]
    sys.argv[1:] = [a for a in sys.argv[1:] if a != '--debug']
    try:
        main()
    except USER_ERRORS + (PretrainedWeightsError,) as e:
        if debug:
            traceback.print_exc()
        print(f'{prog}: error: {e}', file=sys.stderr)
        sys.exit(2)


# --- resolution: the one place that knows how a rate reaches data and model -----------------------------

def accepts_rate(model: nn.Module) -> bool:
    """True when ``model.forward`` (DDP / compile wrappers removed) has a ``rate`` argument and the model is
    not in S4ND 'discrete' resolution mode (whose kernels stay in pixels, so it must not get a rate)."""
    from timm.utils import unwrap_model
    model = unwrap_model(model)
    return 'rate' in inspect.signature(model.forward).parameters and \
        getattr(model, 's4nd_resolution', 'continuous') == 'continuous'


def resize_for_rate(x: Tensor, rate: float) -> Tensor:
    """(B, C, [T,] H, W) at base size -> spatial size round(H / rate), round(W / rate); bilinear + antialias.

    Only the last two (spatial) axes change; video time is kept. rate == 1 returns x unchanged.
    """
    if rate == 1:
        return x
    h, w = x.shape[-2:]
    size = (max(1, round(h / rate)), max(1, round(w / rate)))
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(lead[0], -1, h, w).float(), size=size, mode='bilinear', align_corners=False,
                      antialias=True)
    return y.to(x.dtype).reshape(*lead, *size)


def forward_at_rate(model: nn.Module, x: Tensor, rate: float, pass_rate: bool) -> Tensor:
    """model(x, rate=per-axis rates) when ``pass_rate`` (see ``accepts_rate``), else model(x).

    Per-axis rates follow ``resize_for_rate``: ``rate`` on H and W, 1 on video time: (r, r) or (1, r, r).
    """
    if not pass_rate:
        return model(x)
    return model(x, rate=(1.0,) * (x.dim() - 4) + (float(rate), float(rate)))


# --- helpers -----------------------------------------------------------------------------------------------

def format_seconds(seconds: float) -> str:
    """H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _unpack(batch) -> tuple:
    """(x, y) or (x, y, failures) -> (x, y, failures)."""
    return (batch[0], batch[1], batch[2]) if len(batch) == 3 else (batch[0], batch[1], [])


def _all_reduce_sum(values: Sequence[float], device: torch.device, distributed: bool) -> List[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if distributed:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _partial_sums(loss_sum: Tensor, seen: int, skipped: int, start: float) -> Callable[[], Dict[str, float]]:
    """Deferred running sums of an epoch (the .item() sync happens only if a checkpoint asks for them)."""
    return lambda: {'loss_sum': loss_sum.item(), 'samples': seen, 'skipped': skipped, 'time': time.time() - start}


def _prepare(x: Tensor, device: torch.device, rate: float, channels_last: bool) -> Tensor:
    """Move to device, resize for ``rate``, set the memory format."""
    x = resize_for_rate(x.to(device, non_blocking=True), rate)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


# --- loops -------------------------------------------------------------------------------------------------

def train_one_epoch(
        epoch: int,
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        *,
        device: torch.device,
        num_batches: int,
        start_batch: int = 0,
        num_updates: int = 0,
        epochs: int = 1,
        grad_accum_steps: int = 1,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        channels_last: bool = False,
        log_interval: int = 50,
        distributed: bool = False,
        world_size: int = 1,
        primary: bool = True,
        rate: float = 1.0,
        pass_rate: bool = False,
        lr_scheduler=None,
        loss_scaler=None,
        amp_autocast=nullcontext,
        model_ema=None,
        mixup_fn=None,
        on_update: Optional[Callable[[int, int, Callable[[], Dict[str, float]]], None]] = None,
        partial: Optional[Dict[str, float]] = None,
        epochs_after: int = 0,
) -> Dict[str, float]:
    """One (possibly resumed) training epoch.

    Args:
        num_batches: batches in the full epoch; ``loader`` yields batches start_batch .. num_batches - 1.
        num_updates: optimizer steps before this epoch part; returned updated.
        on_update: called as on_update(batches_done, num_updates, get_partial) after every optimizer step;
            get_partial() returns this rank's running sums {'loss_sum', 'samples', 'skipped', 'time'} (for a resume).
        partial: the running sums of this epoch's batches before start_batch (a resumed epoch), or None.
        epochs: the run's epoch count (progress lines); epochs_after: epochs left after this one (run ETA).
        grad_accum_steps: batches per optimizer step; clip_grad / clip_mode: timm's gradient clipping.
        log_interval: batches between progress lines (logged by the ``primary`` process only).
        distributed / world_size: DDP (``model.no_sync`` between updates, sums reduced over ranks).
    Returns:
        {'loss': mean over the epoch (with ``partial``) and all ranks, 'samples', 'time', 'samples_per_sec',
         'skipped', 'num_updates'}.
    """
    model.train()
    accum = grad_accum_steps
    full_groups = num_batches // accum
    partial = partial or {'loss_sum': 0.0, 'samples': 0, 'skipped': 0, 'time': 0.0}
    loss_sum = torch.tensor(partial['loss_sum'], dtype=torch.float64, device=device)  # on device: no sync per step
    seen, skipped = partial['samples'], partial['skipped']
    last_log = time.time()
    start = last_log - partial['time']  # epoch clock, including the part before an interruption
    done_since_log = 0
    for i, batch in enumerate(loader, start=start_batch):
        x, y, failures = _unpack(batch)
        for failure in failures:
            _logger.warning(f'skipped unreadable {failure}')
        skipped += len(failures)
        group = accum if i // accum < full_groups else num_batches - full_groups * accum
        need_update = (i + 1) % accum == 0 or i == num_batches - 1
        x, y = _prepare(x, device, rate, channels_last), y.to(device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        sync = nullcontext() if need_update or not distributed else model.no_sync()
        with sync:
            with amp_autocast():
                output = forward_at_rate(model, x, rate, pass_rate)
                loss = loss_fn(output, y)
            if loss_scaler is not None:
                loss_scaler(loss / group, optimizer, clip_grad=clip_grad, clip_mode=clip_mode,
                            parameters=model.parameters(), need_update=need_update)
            else:
                (loss / group).backward()
                if need_update:
                    if clip_grad is not None:
                        from timm.utils import dispatch_clip_grad
                        dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
                    optimizer.step()
        loss_sum += loss.detach().double() * x.shape[0]
        seen += x.shape[0]
        done_since_log += 1
        if need_update:
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
            if on_update is not None:
                on_update(i + 1, num_updates, _partial_sums(loss_sum, seen, skipped, start))
        if (i + 1) % log_interval == 0 or i == num_batches - 1:
            recent_loss = loss.item()
            if not math.isfinite(recent_loss):
                raise RuntimeError(f'loss is {recent_loss} at epoch {epoch}, batch {i}: lower --lr, add --clip-grad, '
                                   'or check the data; then restart from the last good checkpoint with --resume.')
            if primary:
                now = time.time()
                batch_time = (now - last_log) / done_since_log
                avg_time = (now - start) / (i + 1)
                eta_epoch = avg_time * (num_batches - i - 1)
                eta_run = eta_epoch + avg_time * num_batches * epochs_after
                _logger.info(
                    f'Train {epoch}/{epochs} [{i + 1:>{len(str(num_batches))}}/{num_batches} '
                    f'{100 * (i + 1) / num_batches:3.0f}%] loss {recent_loss:.4f} ({loss_sum.item() / seen:.4f}) '
                    f'lr {optimizer.param_groups[0]["lr"]:.3e} '
                    f'| {x.shape[0] * world_size / batch_time:.1f} samples/s '
                    f'| ETA epoch {format_seconds(eta_epoch)}, run {format_seconds(eta_run)}')
                last_log, done_since_log = now, 0
    elapsed = time.time() - start
    loss_total, seen, skipped = _all_reduce_sum([loss_sum.item(), seen, skipped], device, distributed)
    return {'loss': loss_total / max(seen, 1), 'samples': int(seen), 'time': elapsed,
            'samples_per_sec': seen / max(elapsed, 1e-9), 'skipped': int(skipped), 'num_updates': num_updates}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, distributed: bool, rate: float = 1.0,
             pass_rate: bool = False, amp_autocast=nullcontext, channels_last: bool = False,
             log_prefix: str = 'Eval') -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole evaluation set (all ranks).

    Returns:
        {'loss', 'top1', 'top5', 'samples', 'skipped'}; top5 is top-min(5, classes).
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, samples
    skipped = 0
    for batch in loader:
        x, y, failures = _unpack(batch)
        for failure in failures:
            _logger.warning(f'skipped unreadable {failure}')
        skipped += len(failures)
        if x.shape[0] == 0:
            continue
        x, y = _prepare(x, device, rate, channels_last), y.to(device)
        with amp_autocast():
            output = forward_at_rate(model, x, rate, pass_rate)
        output = output.float()
        correct = output.topk(min(5, output.shape[1]), dim=1).indices.eq(y.unsqueeze(1))
        sums += torch.stack([F.cross_entropy(output, y, reduction='sum'), correct[:, 0].sum(),
                             correct.any(dim=1).sum(), torch.tensor(y.shape[0], device=device)]).double()
    loss_sum, top1, top5, seen, skipped = _all_reduce_sum(sums.tolist() + [skipped], device, distributed)
    if seen == 0:
        raise RuntimeError(f'{log_prefix}: no sample could be evaluated ({int(skipped)} skipped); check the data.')
    return {'loss': loss_sum / seen, 'top1': 100 * top1 / seen, 'top5': 100 * top5 / seen, 'samples': int(seen),
            'skipped': int(skipped)}
