"""Rendering note events to audio with FluidSynth (libfluidsynth through ctypes).

One :class:`FluidRenderer` holds one synthesiser per soundfont, loaded once per
process, and renders one part at a time so that every part becomes its own
stereo float signal. FluidSynth's own reverb and chorus are off: effects are
applied per stem afterwards, which keeps the mixture exactly the sum of stems.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .voice import SynthError

INSTALL_HINT = "scripts/install-synth-deps.sh"

#: General MIDI soundfonts, with the Debian package that ships each.
SOUNDFONTS = {
    "fluidr3": ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm"),
    "musescore": ("/usr/share/sounds/sf3/MuseScore_General_Full.sf3", "musescore-general-soundfont"),
    "timgm6mb": ("/usr/share/sounds/sf2/TimGM6mb.sf2", "timgm6mb-soundfont"),
}
#: Soundfonts the generator requires; the third adds variety when present.
REQUIRED_SOUNDFONTS = ("fluidr3", "musescore")


@dataclass(frozen=True)
class NoteEvent:
    """A note (or, with ``pitch < 0``, a controller change) of one part.

    ``time`` and ``duration`` are in seconds; for a controller change ``pitch``
    is ``-1 - controller`` and ``velocity`` its value.
    """

    time: float
    duration: float
    pitch: int
    velocity: int


def controller(time: float, number: int, value: int) -> NoteEvent:
    """A MIDI controller change as a :class:`NoteEvent`."""
    return NoteEvent(time, 0.0, -1 - number, int(np.clip(value, 0, 127)))


def _load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("fluidsynth")
    candidates = [name] if name else []
    candidates += ["libfluidsynth.so.3", "libfluidsynth.so.2", "libfluidsynth.so"]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError:
            continue
    else:
        raise SynthError(f"FluidSynth library not found: install the Debian package libfluidsynth3 ({INSTALL_HINT})")
    lib.new_fluid_settings.restype = ctypes.c_void_p
    lib.new_fluid_synth.restype = ctypes.c_void_p
    lib.new_fluid_synth.argtypes = [ctypes.c_void_p]
    lib.fluid_settings_setnum.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double]
    lib.fluid_settings_setint.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.fluid_synth_sfload.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.fluid_synth_program_select.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    for fn in ("fluid_synth_noteon", "fluid_synth_cc"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.fluid_synth_noteoff.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.fluid_synth_system_reset.argtypes = [ctypes.c_void_p]
    lib.fluid_synth_all_sounds_off.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.fluid_synth_write_float.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.delete_fluid_synth.argtypes = [ctypes.c_void_p]
    lib.delete_fluid_settings.argtypes = [ctypes.c_void_p]
    return lib


def soundfont_path(name: str) -> Path:
    """Path of a known soundfont, or a clear error naming its Debian package."""
    path, package = SOUNDFONTS[name]
    if not Path(path).is_file():
        raise SynthError(f"soundfont {path} not found: install the Debian package {package} ({INSTALL_HINT})")
    return Path(path)


def available_soundfonts() -> List[str]:
    """Names of the installed soundfonts; raises if a required one is missing."""
    for name in REQUIRED_SOUNDFONTS:
        soundfont_path(name)
    return [name for name, (path, _) in SOUNDFONTS.items() if Path(path).is_file()]


class FluidRenderer:
    """Renders parts (lists of :class:`NoteEvent`) with General MIDI soundfonts.

    Every part gets a fresh synthesiser, so that nothing one part leaves in
    FluidSynth (voices, controller and block-phase state) changes the next
    and a song renders the same whatever was rendered before it. One resident
    synthesiser per soundfont keeps its samples in FluidSynth's sample cache,
    which makes loading it again for each part cheap.
    """

    def __init__(self, sample_rate: int = 44100, gain: float = 0.4):
        self.sample_rate = sample_rate
        self.gain = gain
        self._lib = _load_library()
        self._resident: Dict[str, tuple] = {}

    def _new_synth(self, soundfont: str) -> tuple:
        lib = self._lib
        settings = lib.new_fluid_settings()
        lib.fluid_settings_setnum(settings, b"synth.sample-rate", float(self.sample_rate))
        lib.fluid_settings_setnum(settings, b"synth.gain", float(self.gain))
        lib.fluid_settings_setint(settings, b"synth.reverb.active", 0)
        lib.fluid_settings_setint(settings, b"synth.chorus.active", 0)
        lib.fluid_settings_setint(settings, b"synth.polyphony", 256)
        lib.fluid_settings_setint(settings, b"synth.cpu-cores", 1)
        synth = lib.new_fluid_synth(settings)
        path = soundfont_path(soundfont)
        sfid = lib.fluid_synth_sfload(synth, str(path).encode(), 1)
        if sfid < 0:
            lib.delete_fluid_synth(synth)
            lib.delete_fluid_settings(settings)
            raise SynthError(f"FluidSynth could not load {path}: reinstall its Debian package ({INSTALL_HINT})")
        return settings, synth, sfid

    def _delete(self, handles: tuple) -> None:
        settings, synth, _ = handles
        self._lib.delete_fluid_synth(synth)
        self._lib.delete_fluid_settings(settings)

    def render(self, events: Sequence[NoteEvent], length: int, soundfont: str, program: int,
               drums: bool = False, tail: float = 2.0) -> np.ndarray:
        """Render one part to a float32 array of shape ``(2, length)``.

        ``program`` is a General MIDI program (0-127) or, for ``drums``, a kit
        preset of bank 128 (the standard kit if the soundfont lacks it).
        FluidSynth applies events at 64-sample block boundaries (1.5 ms).
        """
        lib = self._lib
        if soundfont not in self._resident:
            self._resident[soundfont] = self._new_synth(soundfont)
        handles = self._new_synth(soundfont)
        _, synth, sfid = handles
        try:
            channel = 9 if drums else 0
            bank = 128 if drums else 0
            if lib.fluid_synth_program_select(synth, channel, sfid, bank, program) != 0 and drums:
                lib.fluid_synth_program_select(synth, channel, sfid, bank, 0)
            sr = self.sample_rate
            actions = []  # (sample, kind, key, value); kind 0 = off, 1 = controller, 2 = on
            for e in events:
                start = int(round(e.time * sr))
                if e.pitch < 0:
                    actions.append((start, 1, -1 - e.pitch, e.velocity))
                else:
                    actions.append((start, 2, e.pitch, max(1, min(127, e.velocity))))
                    actions.append((start + max(1, int(round(e.duration * sr))), 0, e.pitch, 0))
            actions.sort(key=lambda a: (a[0], a[1]))
            total = length + int(tail * sr)
            out = np.zeros((2, total), dtype=np.float32)
            pos = 0
            for when, kind, key, value in actions:
                when = min(max(when, 0), total)
                if when > pos:
                    self._write(synth, out, pos, when)
                    pos = when
                if pos >= total:
                    break
                if kind == 2:
                    lib.fluid_synth_noteon(synth, channel, key, value)
                elif kind == 0:
                    lib.fluid_synth_noteoff(synth, channel, key)
                else:
                    lib.fluid_synth_cc(synth, channel, key, value)
            if pos < total:
                self._write(synth, out, pos, total)
        finally:
            self._delete(handles)
        return out[:, :length]

    def _write(self, synth, out: np.ndarray, start: int, stop: int) -> None:
        block = 8192
        for a in range(start, stop, block):
            n = min(block, stop - a)
            left = out[0, a:a + n]
            right = out[1, a:a + n]
            self._lib.fluid_synth_write_float(synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)

    def close(self) -> None:
        for handles in self._resident.values():
            self._delete(handles)
        self._resident.clear()

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


_RENDERERS: Dict[tuple, FluidRenderer] = {}


def shared_renderer(sample_rate: int = 44100) -> FluidRenderer:
    """One renderer per process and rate, so soundfonts load once per worker."""
    key = (os.getpid(), sample_rate)
    if key not in _RENDERERS:
        _RENDERERS[key] = FluidRenderer(sample_rate)
    return _RENDERERS[key]

