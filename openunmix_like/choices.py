"""The names ``umx-train``, ``umx-evaluate`` and ``umx-export`` offer as choices, importable without torch.

The registries they name (:data:`openunmix_like.architectures.ARCHITECTURES`,
:data:`openunmix_like.augment.AUGMENTATIONS`, :data:`openunmix_like.augment.BATCH_AUGMENTATIONS`,
:data:`openunmix_like.losses.LOSSES`, :data:`openunmix_like.evaluate.ORACLES`) hold torch code; the commands
build their options from these names so that ``--help`` or a misspelt choice answers before torch is imported
(seconds). A test keeps the names equal to the registries' keys.
"""
from __future__ import annotations

from typing import Dict

ARCHITECTURE_NAMES = ("umx", "unet2d", "unet1d", "tfattn")
DEFAULT_ARCHITECTURE = "umx"
AUGMENTATION_NAMES = ("gain", "channelswap", "force_stereo", "volume", "timestretch", "pitchshift")
BATCH_AUGMENTATION_NAMES = ("freqmask", "timemask", "mixup")
LOSS_NAMES = ("mse", "l1", "mrstft", "sisdr", "sdr", "wavl1")
ORACLE_NAMES = ("irm1", "irm2", "ibm1", "ibm2", "mwf", "mix")  # umx-evaluate --oracle
# moisesdb, medleydb: the four MUSDB18 targets (other is every other stem), or one target per stem.
STEM_GROUPINGS = ("four", "all")
EXPORT_FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}  # umx-export --format: the file each target becomes

# Training settings that belong together (umx-train --preset); explicit flags win over them.
PRESETS: Dict[str, dict] = {
    # Jansson et al. 2017: mono 8192 Hz, STFT 1024 / hop 768, excerpts of 128 frames ((128 - 1) * 768 samples).
    "unet2d-8k": {"arch": "unet2d", "sample_rate": 8192, "nb_channels": 1, "nfft": 1024, "nhop": 768,
                  "seq_dur": 127 * 768 / 8192, "loss": "l1"},
    # Stoller et al. 2018: 44.1 kHz mono waveform U-Net, L1 on the waveform.
    "unet1d-mono": {"arch": "unet1d", "sample_rate": 44100, "nb_channels": 1, "loss": "wavl1"},
    # The attention U-Net's setup: STFT 2048 / 512, L1 magnitude plus half the multi-resolution STFT loss,
    # gradients clipped at 1.
    "tfattn-2048": {"arch": "tfattn", "nfft": 2048, "nhop": 512, "loss": "l1+0.5*mrstft", "clip_grad": 1.0,
                    "lr_scheduler": "cosine"},
}
