"""The state one training run carries from step to step."""
from __future__ import annotations

import copy
import dataclasses
from typing import List, Optional

import torch
from torch import Tensor, nn

from ..augment import BatchCompose
from ..losses import Objective
from ..modeldir import AudioSettings
from .config import TrainConfig
from .distributed import unwrap
from .history import History


class WeightAverage:
    """Exponential moving average of a model's weights and batch-norm statistics.

    After every optimisation step each floating-point entry of the state dict
    moves towards the trained model's: ``avg += (1 - decay) * (current - avg)``;
    integer entries (batch counts) are copied. It starts from the weights
    training starts from (a ``--model``'s when fine-tuning), with no warm-up.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for module in self.model.modules():
            # A deep copy gives each LSTM weight memory of its own; cuDNN wants them in one block and would
            # otherwise repack them on every call (with a warning). Elsewhere than on a GPU it does nothing.
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = unwrap(model).state_dict()
        for name, avg in self.model.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[name].detach(), 1.0 - self.decay)
            else:
                avg.copy_(current[name])


@dataclasses.dataclass
class Context:
    """Everything the epochs, validation and checkpoints of one run share.

    ``cfg`` is the resolved configuration (see :func:`~openunmix_like.training.factory.build_model`).
    """

    cfg: TrainConfig
    model: nn.Module  # possibly wrapped in DistributedDataParallel
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional[torch.amp.GradScaler]
    device: torch.device
    train_set: torch.utils.data.Dataset
    valid_set: torch.utils.data.Dataset
    settings: AudioSettings
    history: History
    tensorboard: Optional[object] = None
    batch_augment: BatchCompose = dataclasses.field(default_factory=BatchCompose)
    # Randomness of the batch augmentations, re-seeded every epoch.
    generator: torch.Generator = dataclasses.field(default_factory=torch.Generator)
    out_of_time: bool = False  # set when --max-minutes is spent
    autocast: Optional[torch.dtype] = None  # the training step's autocast dtype (--precision), None: fp32
    average: Optional[WeightAverage] = None  # with --ema
    # The levels (dBFS) of the first training mixtures this process drew, after augmentation: their median is
    # written into separator.json for level matching (openunmix_like.level).
    levels: List[float] = dataclasses.field(default_factory=list)


def evaluated_model(ctx: Context) -> nn.Module:
    """The model validation scores and the best-model files hold: the weight average with ``--ema``."""
    return ctx.average.model if ctx.average is not None else unwrap(ctx.model)


@dataclasses.dataclass
class EpochProgress:
    """Where a step checkpoint left an epoch: batches done, the items of the epoch's order they
    used up (all ranks together), their summed loss, samples, and the random states, so the epoch
    continues as if it had not been interrupted."""

    batches: int = 0
    items: int = 0
    total: float = 0.0
    count: int = 0
    data_time: float = 0.0
    # The epoch's seconds so far, the part before an interruption included.
    seconds: float = 0.0
    rng_state: Optional[Tensor] = None
    generator_state: Optional[Tensor] = None
    # The training device's generator on CUDA, whose draws (dropout) the CPU state does not hold.
    cuda_rng_state: Optional[Tensor] = None
    # Under torchrun, each rank's random states (these three), in rank order; the fields above are rank 0's.
    rank_states: Optional[List[dict]] = None
