"""Several targets trained together from one stream of mixtures (``umx-train --targets vocals drums bass other``).

Each batch of mixtures is read (or drawn from memory) once, its STFT is taken
once, and every target's model takes its optimisation step on it against its own
source. Each target keeps its own model, optimiser, schedule, history, early
stopping and files, so the output folder holds what separate runs for each
target would write (``<target>.safetensors``, ``.json``, ``.csv``, ``.chkpnt`` and
``separator.json`` listing them all), and ``--resume auto`` continues each target
from its own checkpoint. Each target draws its dropout masks from a stream of its own,
the one a run of its own draws from, so what one learns does not depend on the targets
beside it (one stopped early, one resumed an epoch behind); its weights are a run of
its own's where its items are drawn alike (docs/training.md, "Several targets in one run").
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .. import data
from ..errors import OpenUnmixLikeError
from ..progress import bar as progress_bar
from .config import STEM_LAYOUTS, TrainConfig, check_options
from .context import Context, EpochProgress
from .distributed import pick_device
from .checkpoint import check_output, earlier_files, start_afresh
from .factory import (DATA_CHANNELS, build_model, make_context, preload_datasets, resolve_precision, settings_of,
                      stem_datasets)
from .history import History
from .loop import (augment_seed, budget_spent, closing_logs, dropout_seed, finish_epoch, keeps_callers_rng, loader,
                   mean_loss, out_of_time_message, resume, should_stop, train_batch, validate_start)

log = logging.getLogger(__name__)
LAYOUTS = ("musdb", "trackfolder_fix", *STEM_LAYOUTS)


def check_targets(cfg: TrainConfig) -> None:
    """What training several targets at once supports, checked before any data is read."""
    targets = cfg.targets or []
    if len(set(targets)) != len(targets):
        raise OpenUnmixLikeError(f"--targets {' '.join(targets)}: a target is named twice")
    if cfg.dataset not in LAYOUTS:
        raise OpenUnmixLikeError(f"--targets trains several targets from the {' or '.join(LAYOUTS)} layouts; "
                                 f"with --dataset {cfg.dataset}, train one --target per run")
    if cfg.target_file:
        raise OpenUnmixLikeError("--targets reads each target from <target>.<ext> in the track folders; "
                                 "drop --target-file")
    if cfg.ckpt_every:
        raise OpenUnmixLikeError("--ckpt-every works with one --target per run; drop it with --targets (every "
                                 "epoch still writes each target's checkpoint)")
    if cfg.checkpoint and not os.path.isdir(cfg.checkpoint):
        raise OpenUnmixLikeError(f"--checkpoint {cfg.checkpoint}: with --targets, give the folder holding each "
                                 "target's <target>.chkpnt (one file would resume every target from it)")
    missing = [t for t in targets if not (Path(cfg.checkpoint) / f"{t}.chkpnt").is_file()] if cfg.checkpoint else []
    if missing:
        raise OpenUnmixLikeError(f"--checkpoint {cfg.checkpoint}: no {', '.join(t + '.chkpnt' for t in missing)}; "
                                 "give a folder holding every target's, or continue in --output with --resume auto "
                                 "(a target without a checkpoint there starts afresh)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OpenUnmixLikeError("--targets runs in one process; under torchrun, train one --target per run")


def shared_datasets(cfg: TrainConfig) -> Tuple[data._Base, data._Base, TrainConfig, list]:
    """Training and validation sets whose items hold every target stacked, ``cfg`` with the
    interferer files resolved, and each target's file name (trackfolder_fix), for the records.
    ``cfg`` is as :func:`~openunmix_like.training.config.check_options` returns it (``samples_per_track`` resolved)."""
    common = dict(sample_rate=cfg.sample_rate, nb_channels=DATA_CHANNELS, seed=cfg.seed)
    train_kw = dict(common, seq_duration=cfg.seq_dur, source_augmentations=cfg.augmentations())
    valid_kw = dict(common, seq_duration=None, random_chunks=False)
    if cfg.root is None:
        raise OpenUnmixLikeError("--root is required: the folder holding the dataset")
    if cfg.dataset in STEM_LAYOUTS:
        return (*stem_datasets(cfg, list(cfg.targets)), cfg, [None] * len(cfg.targets))
    if cfg.dataset == "musdb":
        args = dict(root=cfg.root, target=list(cfg.targets), is_wav=cfg.is_wav)
        return (data.MUSDBDataset(split="train", samples_per_track=cfg.samples_per_track, random_track_mix=True,
                                  **args, **train_kw),
                data.MUSDBDataset(split="valid", **args, **valid_kw), cfg, [None] * len(cfg.targets))
    found = [data.default_track_files(cfg.root, target) for target in cfg.targets]
    files, others = [file for file, _ in found], found[0][1]
    interferers = cfg.interferer_files if cfg.interferer_files is not None else [f for f in others if f not in files]
    args = dict(root=cfg.root, target_file=files, interferer_files=interferers)
    return (data.FixedSourcesTrackFolderDataset(split="train", random_track_mix=cfg.random_track_mix,
                                                samples_per_track=cfg.samples_per_track, **args, **train_kw),
            data.FixedSourcesTrackFolderDataset(split="valid", **args, **valid_kw),
            dataclasses.replace(cfg, interferer_files=interferers), files)


def check_outputs(cfg: TrainConfig) -> None:
    """Each target's :func:`~openunmix_like.training.checkpoint.check_output`, before any data is read
    (``cfg`` from :func:`check_options`: with ``--model``, the settings are the model's). A fresh run into an
    ``--output`` holding some of the targets is refused in one line naming them all."""
    settings = settings_of(cfg)
    own = [dataclasses.replace(cfg, target=target) for target in cfg.targets]
    for target_cfg in own:  # writable, and the folder's other models share the settings
        check_output(dataclasses.replace(target_cfg, resume=cfg.resume or "auto"), settings)
    held = {c.target: files for c in own if (files := earlier_files(c))}
    if held and not (cfg.resume or cfg.checkpoint or cfg.force):
        first = next(iter(held.values()))[0].name
        fresh = [t for t in cfg.targets if t not in held]
        also = f" ({', '.join(fresh)} start{'s' if len(fresh) == 1 else ''} afresh)" if fresh else ""
        raise OpenUnmixLikeError(f"--output {cfg.output}: already holds {', '.join(held)} of --targets ({first}); "
                                 f"continue them with --resume auto{also}, start over with --force (which replaces "
                                 "them), or give another --output")
    for target_cfg in own:  # resume and --force as given now: refuses what --force does not allow
        check_output(target_cfg, settings)


def prepare_targets(cfg: TrainConfig) -> Tuple[List[Context], data._Base]:
    """One context per target around the shared training set (each validates on its own target)."""
    if cfg.target is not None:
        raise OpenUnmixLikeError(f"--target {cfg.target} with --targets {' '.join(cfg.targets)}: name the targets "
                                 "with --targets alone")
    cfg = check_options(cfg)
    check_targets(cfg)
    check_outputs(cfg)
    device = pick_device(cfg.device, cfg.no_cuda)
    cfg = resolve_precision(cfg, device)  # a precision the device lacks is refused before any data is read
    train_set, valid_set, cfg, files = shared_datasets(cfg)
    cfg = preload_datasets(cfg, device, train_set, valid_set)
    contexts = []
    for k, (target, file) in enumerate(zip(cfg.targets, files)):
        own = dataclasses.replace(cfg, target=target, target_file=file)
        view = data.TargetView(train_set, k)
        model, settings, own = build_model(own, view, device)
        contexts.append(make_context(own, model, settings, device, view, data.TargetView(valid_set, k)))
    for ctx in contexts:  # only now: a run refused above keeps the checkpoints --force would replace
        start_afresh(ctx.cfg)
    return contexts, train_set


@keeps_callers_rng
def run_targets(cfg: TrainConfig) -> Dict[str, History]:
    """Train every target of ``cfg.targets`` together; returns each target's history."""
    contexts, train_set = prepare_targets(cfg)
    with closing_logs(contexts):
        starts = {id(ctx): resume(ctx)[0] for ctx in contexts}
        for ctx in contexts:
            if starts[id(ctx)] == 1 and cfg.model:
                validate_start(ctx)
        stopped = set()
        for epoch in range(min(starts.values()), cfg.epochs + 1):
            active = []
            for k, ctx in enumerate(contexts):
                if id(ctx) in stopped or starts[id(ctx)] > epoch:
                    continue
                if should_stop(ctx, epoch):
                    stopped.add(id(ctx))
                    continue
                active.append((k, ctx))
            if not active:
                if any(id(ctx) not in stopped and starts[id(ctx)] > epoch for ctx in contexts):
                    continue  # resumed: the others' checkpoints are of later epochs (one stopped early)
                break
            for (k, ctx), result in zip(active, train_epoch_shared(active, train_set, epoch)):
                finish_epoch(ctx, epoch, *result)
            if active[0][1].out_of_time:
                if not cfg.quiet:
                    log.info("%s", out_of_time_message(active[0][1], epoch))
                break
    return {ctx.cfg.target: ctx.history for ctx in contexts}


def train_epoch_shared(active: List[Tuple[int, Context]], train_set, epoch: int) -> List[tuple]:
    """One pass over the shared training set, every active target stepping on each batch.

    Returns, per target, what :func:`~openunmix_like.training.loop.train_epoch` returns: mean loss
    (``None`` for a target that took no step), seconds (the shared epoch's), data-loading share, samples.
    With ``--max-minutes`` the epoch ends at the batch that spends the budget (the first target's
    training time so far plus this epoch's), and every active target is marked out of time.
    """
    lead = active[0][1]
    for _, ctx in active:
        ctx.model.train()
        ctx.generator.manual_seed(augment_seed(ctx.cfg, epoch))
    share_stft = all(not ctx.batch_augment and (ctx.settings.n_fft, ctx.settings.n_hop) ==
                     (lead.settings.n_fft, lead.settings.n_hop) for _, ctx in active)
    progress = {id(ctx): EpochProgress() for _, ctx in active}
    batches = loader(lead, train_set, epoch, train=True)
    torch.manual_seed(dropout_seed(lead.cfg, epoch))
    iterator = iter(batches)  # which draws the loader's seed, as in a run of one target
    # Each target draws its dropout masks from its own stream, the one a run of its own would draw from,
    # whichever targets step beside it (one stopped early, or resumed from an earlier epoch). On CUDA,
    # setting the generator makes cuDNN's LSTM dropout state anew from it at the next step: those masks
    # stay the target's own but are not a lone run's (docs/training.md).
    streams = dict.fromkeys((id(ctx) for _, ctx in active), rng_states(lead.device))
    data_time, start = 0.0, time.perf_counter()
    last = start
    quiet = lead.cfg.quiet
    with progress_bar(not quiet, iterator, total=len(batches), desc=f"epoch {epoch}", leave=False) as bar:
        for batch, (x, targets) in enumerate(bar, start=1):
            data_time += time.perf_counter() - last
            x, targets = x.to(lead.device, non_blocking=True), targets.to(lead.device, non_blocking=True)
            mix_stft = None
            if share_stft:
                with torch.no_grad():
                    mix_stft = lead.objective.stft(x)
            for k, ctx in active:
                set_rng_states(streams[id(ctx)], ctx.device)
                train_batch(ctx, x, targets[:, k], epoch, batch, progress[id(ctx)], mix_stft=mix_stft)
                streams[id(ctx)] = rng_states(ctx.device)
            if lead.cfg.max_minutes and budget_spent(lead, time.perf_counter() - start):
                for _, ctx in active:
                    ctx.out_of_time = True
                break
            last = time.perf_counter()
    elapsed = time.perf_counter() - start
    share = data_time / max(elapsed, 1e-9)
    return [(mean_loss(progress[id(ctx)].total, progress[id(ctx)].count), elapsed, share, progress[id(ctx)].count)
            for _, ctx in active]


def rng_states(device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The generators dropout draws from: the CPU's, and on CUDA the device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_states(states: Tuple[torch.Tensor, Optional[torch.Tensor]], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)
