"""The Open-Unmix model, under the name users and the reference package know.

It lives in :mod:`openunmix_like.architectures.umx`, registered as ``umx`` beside
the other architectures; this module re-exports it.
"""
from .architectures.umx import (
    LEGACY_KEYS,
    OpenUnmix,
    OpenUnmixConfig,
    bandwidth_to_max_bin,
    config_from_state_dict,
    strip_legacy_keys,
    widen,
)

__all__ = ["LEGACY_KEYS", "OpenUnmix", "OpenUnmixConfig", "bandwidth_to_max_bin", "config_from_state_dict",
           "strip_legacy_keys", "widen"]
