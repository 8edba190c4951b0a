"""Songs composed by program: form, harmony, grooves, bass lines, parts and a sung melody.

:func:`compose` turns a random generator into a :class:`SongPlan`: a style and
tempo, a key, a form of sections (intro, verse, chorus, bridge, break,
outro) each with a chord progression, a drum part, a bass part that follows
the harmony, three to five accompaniment parts from different instrument
families, and lead (plus, in choruses, harmony) vocal lines with words.
Everything is plain data, so a plan can be stored as JSON next to the audio.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .fluid import NoteEvent, controller
from .voice import SungNote

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

PROGRESSIONS = {
    "major": [(0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4),
              (3, 4, 0, 5), (0, 4, 3, 3), (0, 2, 3, 4), (3, 0, 4, 5), (0, 0, 3, 4), (5, 4, 3, 4)],
    "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (5, 6, 0, 0), (0, 5, 3, 4),
              (0, 2, 6, 3), (0, 0, 5, 6), (3, 4, 0, 0)],
}

# Drum grooves on a 16-step (or, for shuffle, 12-step triplet) bar. Characters:
# x accent, o normal, g ghost note, . rest. Keys are General MIDI drum notes.
KICK, RIM, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE, TAMBOURINE, SHAKER = (
    36, 37, 38, 39, 42, 44, 46, 49, 51, 54, 70)
TOMS = (50, 48, 47, 45, 43, 41)


@dataclass(frozen=True)
class Style:
    name: str
    tempo: Tuple[int, int]
    steps: int                      # steps per bar (16, or 12 for a triplet feel)
    swing: Tuple[float, float]      # delay of off-beat steps, as a fraction of a step
    kits: Tuple[int, ...]           # General MIDI kit presets (bank 128)
    grooves: Tuple[Dict[int, str], ...]
    bass: Tuple[str, ...]           # bass rhythm patterns (same grid)
    comp: Tuple[str, ...]           # chord comping rhythms
    legato: float                   # bass note length as a share of the gap to the next note


STYLES = (
    Style("rock", (92, 150), 16, (0.0, 0.0), (0, 8, 16), (
        {KICK: "x.......x.o.....", SNARE: "....x.......x...", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.....o.x.......", SNARE: "....x.......x...", CLOSED_HAT: "x.o.x.o.x.o.x.o."},
        {KICK: "x.o.....x.o..o..", SNARE: "....x.......x...", RIDE: "o.o.o.o.o.o.o.o."}),
        ("x.x.x.x.x.x.x.x.", "x.......x.o.....", "x..x..x.x.......", "x...x...x...x..."),
        ("x.x.x.x.x.x.x.x.", "x.......x.......", "x..x..x...x..x.."), 0.85),
    Style("pop", (84, 128), 16, (0.0, 0.08), (0, 8, 24), (
        {KICK: "x.....o.x.o.....", SNARE: "....x.......x...", CLOSED_HAT: "xoooxoooxoooxooo"},
        {KICK: "x.......x.......", CLAP: "....x.......x...",
         CLOSED_HAT: "o.o.o.o.o.o.o.o.", SHAKER: "oooooooooooooooo"},
        {KICK: "x..o....x..o....", SNARE: "....x.......x...", CLOSED_HAT: "o.oxo.oxo.oxo.ox"}),
        ("x.....x.x.......", "x.x.x.x.x.x.x.x.", "x..x..x...x.x..."),
        ("x...x...x...x...", "x..x..x...x.x...", "x.......x......."), 0.8),
    Style("funk", (92, 116), 16, (0.0, 0.15), (0, 8, 32), (
        {KICK: "x..o..o...x..o..", SNARE: "....x..g.g..x..g", CLOSED_HAT: "xoooxoooxoooxooo"},
        {KICK: "x.o...o..ox.....", SNARE: "..g.x..g..g.x.g.",
         CLOSED_HAT: "oxoooxoooxoooxoo", OPEN_HAT: "..............o."}),
        ("x..o..o...x.o.o.", "x.xo...ox.o...o.", "x..x.x..x..x.x.."),
        ("..x...x...x...x.", ".x.x..x..x.x..x.", "x..x..x..x..x..."), 0.55),
    Style("disco", (112, 128), 16, (0.0, 0.0), (0, 24, 25), (
        {KICK: "x...x...x...x...", CLAP: "....x.......x...",
         CLOSED_HAT: "x.x.x.x.x.x.x.x.", OPEN_HAT: "..o...o...o...o."},
        {KICK: "x...x...x...x...", SNARE: "....x.......x...",
         CLOSED_HAT: "oxoxoxoxoxoxoxox", TAMBOURINE: "....o.......o..."}),
        ("x.X.x.X.x.X.x.X.".lower(), "x.x.x.x.x.x.x.x.", "x..xx..xx..xx..x"),
        ("..x...x...x...x.", "x.x.x.x.x.x.x.x."), 0.6),
    Style("hiphop", (78, 98), 16, (0.1, 0.3), (0, 8, 25), (
        {KICK: "x......o..x.....", SNARE: "....x.......x...", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.o.......x..o..", CLAP: "....x.......x...", CLOSED_HAT: "oooooooooooooooo"}),
        ("x......o..x.....", "x.o.......x..o..", "x.......x......."),
        ("x.......x.......", "x...............", "x.....x.....x..."), 0.9),
    Style("halftime", (128, 160), 16, (0.0, 0.1), (0, 16), (
        {KICK: "x.........o.....", SNARE: "........x.......", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.x.......o..o..", SNARE: "........x.......", RIDE: "o.o.o.o.o.o.o.o."}),
        ("x.........x.....", "x.x.......x..x..", "x.......x......."),
        ("x...............", "x.......x.......", "x.....x.....x..."), 0.9),
    Style("shuffle", (92, 140), 12, (0.0, 0.0), (0, 8, 32), (
        {KICK: "x.....x.....", SNARE: "...x.....x..", CLOSED_HAT: "x.ox.ox.ox.o"},
        {KICK: "x..x..x.....", SNARE: "...x.....x.g", RIDE: "x.ox.ox.ox.o"}),
        ("x..x..x..x..", "x.ox.ox.ox.o", "x.....x....."),
        ("x.ox.ox.ox.o", "...x.....x..", "x..x..x..x.."), 0.85),
    Style("ballad", (60, 82), 16, (0.0, 0.05), (0, 32, 40), (
        {KICK: "x.......x.......", RIM: "....x.......x...", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.....o.........", SNARE: "....x.......x...", RIDE: "o...o...o...o..."}),
        ("x...............", "x.......x.......", "x.....x.x......."),
        ("x.......x.......", "x...x...x...x...", "x..............."), 0.95),
    Style("reggae", (68, 90), 16, (0.1, 0.25), (0, 8), (
        {KICK: "........x.......", RIM: "........x.......", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x.......x.......", SNARE: "........x.......", CLOSED_HAT: "o.ooo.ooo.ooo.oo"}),
        ("x.....x.x..x....", "x...x.x.........", "x..x....x.x....."),
        ("....x.......x...", "..x...x...x...x."), 0.6),
    Style("bossa", (116, 148), 16, (0.0, 0.0), (0, 32, 40), (
        {KICK: "x..ox..ox..ox..o", RIM: "x..x..x...x..x..", CLOSED_HAT: "o.o.o.o.o.o.o.o."},
        {KICK: "x..ox..ox..ox..o", RIM: "..x..x...x..x...", SHAKER: "oooooooooooooooo"}),
        ("x..ox..ox..ox..o", "x...x...x...x..."),
        ("x..x..x...x..x..", "..x..x...x..x..."), 0.7),
    Style("electro", (118, 132), 16, (0.0, 0.05), (24, 25), (
        {KICK: "x..x..x...x.....", CLAP: "....x.......x...", CLOSED_HAT: "oooooooooooooooo"},
        {KICK: "x...x...x...x...", CLAP: "....x.......x...", OPEN_HAT: "..o...o...o...o."}),
        ("x.xxx.xxx.xxx.xx", "x...x...x...x...", "..x...x...x...x."),
        ("x..x..x...x..x..", "x.......x......."), 0.5),
)

# Accompaniment roles, each with the General MIDI programs it may use.
ROLES = {
    "keys": (0, 1, 2, 4, 5, 7, 16, 17, 18),        # pianos, electric pianos, clavinet, organs
    "strum": (24, 25, 27, 28, 29, 30),             # nylon, steel, clean, muted, overdriven, distorted guitar
    "arpeggio": (24, 25, 26, 27, 46, 0, 4, 11, 12, 8),  # guitars, harp, piano, mallets, celesta
    "pad": (48, 49, 50, 51, 88, 89, 90, 92, 94, 95, 16, 19),  # strings, synth pads, organs
    "stabs": (61, 62, 63, 56, 0, 4),               # brass section, synth brass, trumpet, pianos
    "synth": (80, 81, 83, 84, 87, 38, 11, 13),     # synth leads, mallets
    "counter": (73, 65, 66, 71, 40, 56, 80, 11, 68, 69, 22),  # flute, saxes, clarinet, violin, ...
}
ROLE_REGISTER = {"keys": 60, "strum": 57, "arpeggio": 64, "pad": 62, "stabs": 65, "synth": 72, "counter": 74}
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39)

SECTION_LENGTH = {"intro": (2, 4), "verse": (8, 8), "prechorus": (4, 4), "chorus": (8, 8),
                  "bridge": (4, 8), "break": (2, 4), "outro": (4, 4)}
# Probability that each kind of stem plays in a section of each kind.
SECTION_ACTIVITY = {
    "intro": {"drums": 0.6, "bass": 0.5, "other": 0.6, "vocals": 0.0},
    "verse": {"drums": 0.9, "bass": 0.95, "other": 0.65, "vocals": 0.95},
    "prechorus": {"drums": 0.9, "bass": 0.9, "other": 0.7, "vocals": 0.95},
    "chorus": {"drums": 1.0, "bass": 1.0, "other": 0.9, "vocals": 1.0},
    "bridge": {"drums": 0.6, "bass": 0.7, "other": 0.75, "vocals": 0.5},
    "break": {"drums": 0.4, "bass": 0.5, "other": 0.6, "vocals": 0.25},
    "outro": {"drums": 0.7, "bass": 0.7, "other": 0.7, "vocals": 0.3},
}
FORMS = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "verse", "prechorus", "chorus", "verse", "prechorus", "chorus", "break", "chorus", "outro"),
    ("verse", "chorus", "verse", "chorus", "break", "chorus", "chorus"),
    ("intro", "chorus", "verse", "chorus", "bridge", "verse", "chorus", "outro"),
    ("intro", "verse", "verse", "chorus", "break", "verse", "chorus", "chorus", "outro"),
)

LYRICS = (
    "i can feel the night coming down on me", "we were young and the road was long",
    "hold on to the light in your eyes", "all the stars are falling in the rain",
    "take my hand and we will run away", "every word you say is in my head",
    "dancing on the edge of the summer sky", "i will wait for you by the river",
    "tell me why the morning feels so cold", "we could be the fire in the dark",
    "never let me go when the music ends", "you and i are walking through the city",
    "open up the door and let the sun in", "i have been away for so many days",
    "come with me tonight we can fly so high", "nothing in the world can bring me down",
    "the ocean calls my name again", "we sing along until the lights go out",
    "remember how we laughed in the summer rain", "i lost my way but now i am home",
    "turn it up and let the people dance", "my heart is beating like a drum",
    "we are going nowhere but we are free", "stay with me until the morning light",
    "shadows on the wall are moving slow", "give me one more reason to believe",
    "the city sleeps but we are wide awake", "say the word and i will follow you",
    "golden days are gone but not forgotten", "under the moon we find our way",
    "you are the song that is stuck in my mind", "let the wind carry all your fears away",
    "there is a fire burning in my soul", "oh oh oh we are never coming down",
    "yeah yeah the night is young", "break the chains and set yourself free",
    "lonely roads are calling out my name", "we will shine like diamonds in the sky",
    "hey hey come and dance with me", "time is running out so hold me close",
)


@dataclass
class Part:
    """One instrument of the arrangement; ``stem`` says which stem it is summed into."""

    name: str
    stem: str
    role: str
    soundfont: str
    program: int
    drums: bool = False
    pan: float = 0.0
    width: float = 1.0
    gain_db: float = 0.0
    sections: List[int] = field(default_factory=list)
    events: List[NoteEvent] = field(default_factory=list)


@dataclass
class Section:
    kind: str
    start: float        # seconds from the start of the composed song
    bars: int
    chords: List[int]   # scale degree of the chord of each half bar


@dataclass
class VocalLine:
    """A sung line: the lead, or a harmony a third above it (quieter, panned)."""

    name: str
    voice: Dict
    notes: List[SungNote]
    gain_db: float = 0.0
    pan: float = 0.0


@dataclass
class SongPlan:
    seed: int
    style: str
    tempo: float
    key: int
    mode: str
    swing: float
    kit: int
    sections: List[Section]
    parts: List[Part]
    vocals: List[VocalLine]
    length: float       # seconds of composed music

    @property
    def key_name(self) -> str:
        return f"{KEY_NAMES[self.key]} {self.mode}"

    def summary(self) -> Dict:
        """JSON-friendly description (without the note events)."""
        return {
            "seed": self.seed, "style": self.style, "tempo": round(self.tempo, 2), "key": self.key_name,
            "swing": round(self.swing, 3), "drum_kit": self.kit,
            "sections": [{"index": k, "kind": s.kind, "start": round(s.start, 3), "bars": s.bars}
                         for k, s in enumerate(self.sections)],
            "parts": [{"name": p.name, "stem": p.stem, "role": p.role, "soundfont": p.soundfont,
                       "program": p.program, "sections": p.sections} for p in self.parts],
            "vocals": [{"name": v.name, "voice": v.voice, "gain_db": round(v.gain_db, 2),
                        "lyrics": " ".join(n.word for n in v.notes if n.word)} for v in self.vocals],
        }


class _Timing:
    """Converts (bar, step) positions to seconds, with swing and human timing."""

    def __init__(self, tempo: float, steps: int, swing: float):
        self.steps = steps
        self.step = 60.0 / tempo * 4 / steps
        self.bar = self.step * steps
        self.swing = swing

    def at(self, section: Section, bar: float, step: float) -> float:
        t = section.start + bar * self.bar + step * self.step
        if self.steps == 16 and int(step) % 2 == 1 and step == int(step):
            t += self.swing * self.step
        return t


def _scale(mode: str) -> Tuple[int, ...]:
    return MAJOR if mode == "major" else MINOR


def chord_pitch_classes(key: int, mode: str, degree: int, seventh: bool = False) -> List[int]:
    """Pitch classes of the diatonic triad (or seventh chord) on ``degree``."""
    scale = _scale(mode)
    tones = [(key + scale[(degree + 2 * k) % 7]) % 12 for k in range(4 if seventh else 3)]
    if mode == "minor" and degree == 4:  # harmonic-minor dominant: raise the third
        tones[1] = (tones[1] + 1) % 12
    return tones


def voice_chord(pcs: Sequence[int], center: int, previous: Optional[List[int]], spread: int = 0) -> List[int]:
    """Close voicing of ``pcs`` near ``center``, choosing the inversion nearest ``previous``."""
    candidates = []
    for inversion in range(len(pcs)):
        order = list(pcs[inversion:]) + list(pcs[:inversion])
        for base in range(center - 12, center + 6):
            if base % 12 != order[0]:
                continue
            notes = [base]
            for pc in order[1:]:
                nxt = notes[-1] + 1
                while nxt % 12 != pc:
                    nxt += 1
                notes.append(nxt)
            if spread:
                notes = notes + [notes[0] + 12]
            candidates.append(notes)
    if previous:
        def cost(c):
            return abs(np.mean(c) - np.mean(previous)) + 0.3 * abs(np.mean(c) - center)
    else:
        def cost(c):
            return abs(np.mean(c) - center)
    return min(candidates, key=cost)


def _humanize(rng: np.random.Generator, t: float, amount: float = 0.006) -> float:
    return max(0.0, t + float(rng.normal(0, amount)))


def _velocity(char: str, rng: np.random.Generator, base: int = 0) -> int:
    v = {"x": 112, "o": 88, "g": 42}[char] + base + int(rng.integers(-9, 10))
    return int(np.clip(v, 1, 127))


def _drum_part(rng, style: Style, timing: _Timing, sections: List[Section], active: List[int],
               soundfont: str, kit: int) -> Part:
    part = Part("drums", "drums", "kit", soundfont, kit, drums=True, sections=active)
    groove_a = style.grooves[int(rng.integers(len(style.grooves)))]
    groove_b = style.grooves[int(rng.integers(len(style.grooves)))]
    dynamics = int(rng.integers(-12, 6))
    for index in active:
        sec = sections[index]
        groove = groove_b if sec.kind in ("chorus", "bridge") else groove_a
        if sec.kind == "break" and rng.random() < 0.5:
            groove = {k: v for k, v in groove.items() if k in (CLOSED_HAT, RIDE, SHAKER, RIM)} or groove
        if index == 0 or index - 1 not in active or rng.random() < 0.7:
            part.events.append(NoteEvent(timing.at(sec, 0, 0), 1.5, CRASH, _velocity("x", rng)))
        for bar in range(sec.bars):
            fill = bar == sec.bars - 1 and rng.random() < 0.6
            fill_from = timing.steps - (timing.steps // 4 if rng.random() < 0.6 else timing.steps // 2)
            for note, pattern in groove.items():
                for step, char in enumerate(pattern):
                    if char == "." or (fill and step >= fill_from):
                        continue
                    if char == "g" and rng.random() < 0.3:
                        continue
                    t = _humanize(rng, timing.at(sec, bar, step))
                    part.events.append(NoteEvent(t, timing.step * 0.9, note, _velocity(char, rng, dynamics)))
            if bar % 2 == 1 and rng.random() < 0.15:  # an extra kick for variety
                step = int(rng.integers(timing.steps))
                part.events.append(NoteEvent(_humanize(rng, timing.at(sec, bar, step)), 0.1, KICK,
                                             _velocity("o", rng, dynamics)))
            if fill:
                toms = list(TOMS) if rng.random() < 0.6 else [SNARE] * 6
                for k, step in enumerate(range(fill_from, timing.steps)):
                    note = toms[min(len(toms) - 1, k * len(toms) // max(1, timing.steps - fill_from))]
                    part.events.append(NoteEvent(_humanize(rng, timing.at(sec, bar, step)), timing.step,
                                                 note, _velocity("o" if k % 2 else "x", rng, dynamics)))
    return part


def _chord_at(sec: Section, bar: int, step: int, steps: int) -> int:
    half = bar * 2 + (1 if step >= steps // 2 else 0)
    return sec.chords[min(half, len(sec.chords) - 1)]


def _bass_part(rng, style: Style, timing: _Timing, plan_key: int, mode: str, sections: List[Section],
               active: List[int], soundfont: str) -> Part:
    program = int(rng.choice(BASS_PROGRAMS))
    part = Part("bass", "bass", "bass", soundfont, program, sections=active)
    pattern_a = style.bass[int(rng.integers(len(style.bass)))]
    pattern_b = style.bass[int(rng.integers(len(style.bass)))]
    scale = _scale(mode)
    low = 28 + (plan_key - 4) % 12  # lowest root: E1 .. D#2
    for index in active:
        sec = sections[index]
        pattern = pattern_b if sec.kind == "chorus" else pattern_a
        hits = [s for s, c in enumerate(pattern) if c != "."]
        for bar in range(sec.bars):
            for k, step in enumerate(hits):
                degree = _chord_at(sec, bar, step, timing.steps)
                root = low + (scale[degree] + (plan_key - low)) % 12
                nxt_step = hits[k + 1] if k + 1 < len(hits) else timing.steps
                gap = (nxt_step - step) * timing.step
                pitch = root
                r = rng.random()
                if step % (timing.steps // 2) and r < 0.2:
                    pitch = root + 7  # fifth
                elif step % (timing.steps // 2) and r < 0.3:
                    pitch = root + 12  # octave
                elif k == len(hits) - 1 and r < 0.5:  # approach the next chord's root
                    nxt_degree = _chord_at(sec, bar + 1, 0, timing.steps) if bar + 1 < sec.bars else degree
                    target = low + (scale[nxt_degree] + (plan_key - low)) % 12
                    pitch = target + (-1 if rng.random() < 0.5 else 2 if mode == "major" else 1)
                t = _humanize(rng, timing.at(sec, bar, step), 0.004)
                vel = _velocity(pattern[step] if pattern[step] in "xog" else "o", rng)
                part.events.append(NoteEvent(t, max(0.05, gap * style.legato), int(pitch), vel))
    return part


def _accompaniment(rng, role: str, style: Style, timing: _Timing, key: int, mode: str,
                   sections: List[Section], active: List[int], soundfont: str, number: int) -> Part:
    program = int(rng.choice(ROLES[role]))
    part = Part(f"{role}-{number}", "other", role, soundfont, program, sections=active)
    center = ROLE_REGISTER[role] + int(rng.integers(-3, 4))
    steps = timing.steps
    rhythm = style.comp[int(rng.integers(len(style.comp)))]
    seventh = rng.random() < 0.35
    previous: Optional[List[int]] = None
    arp_order = rng.choice(["up", "down", "updown", "random"])
    arp_rate = 2 if role == "arpeggio" and rng.random() < 0.5 else 1  # steps between arpeggio notes
    if role == "synth":
        arp_rate = 1 if rng.random() < 0.6 else 2
    counter_steps = None
    if role == "pad":
        part.events.append(controller(0.0, 11, 90))
    for index in active:
        sec = sections[index]
        for bar in range(sec.bars):
            for half in range(2):
                degree = sec.chords[min(bar * 2 + half, len(sec.chords) - 1)]
                pcs = chord_pitch_classes(key, mode, degree, seventh)
                voicing = voice_chord(pcs, center, previous)
                previous = voicing
                h0 = half * (steps // 2)
                span = range(h0, h0 + steps // 2)
                if role == "pad":
                    if half == 1 and degree == sec.chords[min(bar * 2, len(sec.chords) - 1)]:
                        continue
                    held = steps // 2 if half == 1 or (bar * 2 + 1 < len(sec.chords) and
                                                       sec.chords[bar * 2 + 1] != degree) else steps
                    t = timing.at(sec, bar, h0)
                    for p in voicing:
                        part.events.append(NoteEvent(t, held * timing.step * 0.98, p, int(rng.integers(55, 80))))
                elif role in ("keys", "stabs", "strum"):
                    length = 0.25 if role == "stabs" else 0.9
                    if role == "strum" and program == 28:
                        length = 0.3  # palm-muted guitar
                    notes = voicing
                    if role == "strum":
                        if program in (29, 30):  # power chord on distorted guitar
                            notes = [voicing[0] - 12, voicing[0] - 5, voicing[0]]
                        else:
                            notes = voice_chord(pcs, center, None, spread=1)
                    hits = [s for s in span if rhythm[s % len(rhythm)] != "."]
                    for k, step in enumerate(hits):
                        nxt = hits[k + 1] if k + 1 < len(hits) else h0 + steps // 2
                        dur = max(0.06, (nxt - step) * timing.step * length)
                        t = _humanize(rng, timing.at(sec, bar, step))
                        up = role == "strum" and step % 2 == 1
                        order = notes[::-1] if up else notes
                        for j, p in enumerate(order):
                            delay = j * (0.012 if role == "strum" else 0.003)
                            part.events.append(NoteEvent(t + delay, dur, p, _velocity(rhythm[step % len(rhythm)], rng)))
                    if role == "keys" and program < 8 and rng.random() < 0.5:  # left hand root
                        part.events.append(NoteEvent(timing.at(sec, bar, h0), steps // 2 * timing.step * 0.95,
                                                     voicing[0] - 12 if voicing[0] >= 48 else voicing[0], 70))
                elif role in ("arpeggio", "synth"):
                    tones = voicing + [voicing[0] + 12] if role == "synth" else voicing
                    if arp_order == "down":
                        tones = tones[::-1]
                    elif arp_order == "updown":
                        tones = tones + tones[-2:0:-1]
                    for k, step in enumerate(range(h0, h0 + steps // 2, arp_rate)):
                        p = tones[int(rng.integers(len(tones)))] if arp_order == "random" else tones[k % len(tones)]
                        t = _humanize(rng, timing.at(sec, bar, step), 0.004)
                        part.events.append(NoteEvent(t, arp_rate * timing.step * 0.9, p, int(rng.integers(60, 96))))
                elif role == "counter":
                    if counter_steps is None or rng.random() < 0.3:
                        counter_steps = sorted(rng.choice(steps // 2, size=int(rng.integers(1, 4)), replace=False))
                    for step in counter_steps:
                        scale = _scale(mode)
                        tone = voicing[int(rng.integers(len(voicing)))] + 12
                        if rng.random() < 0.4:  # passing tone from the scale
                            deg = (scale.index((tone - key) % 12) if (tone - key) % 12 in scale else 0) + 1
                            tone = tone - (tone - key) % 12 + scale[deg % 7] + (12 if deg >= 7 else 0)
                        t = _humanize(rng, timing.at(sec, bar, h0 + step))
                        dur = (steps // 2 - step) * timing.step * float(rng.uniform(0.5, 0.95))
                        part.events.append(NoteEvent(t, max(0.1, dur), int(tone), int(rng.integers(70, 105))))
    return part


def _phrase_rhythm(rng, steps: int, bars: int, count: int) -> List[Tuple[int, int]]:
    """``count`` note (start, length) pairs in steps for a phrase of ``bars`` bars, ending on a long note.

    Notes fall on eighths (triplet quarters in a triplet feel), or on
    sixteenths when the words do not fit; the last quarter of the phrase is
    left for the held last note and a breath.
    """
    total = steps * bars
    for grid in ((2, 1) if steps == 16 else (3, 1)):
        start = int(rng.choice([0, grid, 2 * grid])) if rng.random() < 0.6 else 0
        usable = int(total * 0.75) - start
        if usable // grid >= count:
            break
    count = min(count, max(1, usable // grid))
    slots = np.sort(rng.choice(np.arange(start, start + usable, grid), size=count, replace=False))
    notes = []
    for k, s in enumerate(slots):
        end = slots[k + 1] if k + 1 < len(slots) else min(total - grid, s + int(rng.integers(4, 9)) * max(1, grid // 2))
        notes.append((int(s), max(1, int(end - s))))
    return notes


def _lyric_lines(rng) -> Dict[int, List[List[str]]]:
    lines: Dict[int, List[List[str]]] = {}
    for line in LYRICS:
        words = line.split()
        lines.setdefault(len(words), []).append(words)
    for group in lines.values():
        rng.shuffle(group)
    return lines


def _take_line(lines: Dict[int, List[List[str]]], count: Optional[int], rng) -> List[str]:
    """A lyric line of ``count`` words if there is one (else the nearest length), used in turn."""
    lengths = sorted(lines)
    n = lengths[int(rng.integers(len(lengths)))] if count is None else min(lengths, key=lambda k: abs(k - count))
    group = lines[n]
    group.append(group.pop(0))
    return list(group[-1])


def _melody_line(rng, timing: _Timing, key: int, mode: str, sections: List[Section], active: List[int],
                 low: int, high: int, voice: Dict) -> VocalLine:
    scale = _scale(mode)

    def pitch_of(d: int) -> int:  # scale degree index d -> MIDI pitch
        return key + 12 * (d // 7) + scale[d % 7]

    degrees = [d for d in range(0, 70) if low <= pitch_of(d) <= high]
    lo_d, hi_d = degrees[0], degrees[-1]
    phrase_bars = 2 if timing.bar < 2.6 else 1
    motifs: Dict[str, List[Tuple[List[Tuple[int, int]], List[int]]]] = {}
    notes: List[SungNote] = []
    lines = _lyric_lines(rng)
    for index in active:
        sec = sections[index]
        lift = 2 if sec.kind == "chorus" else 1 if sec.kind == "prechorus" else 0
        center = lo_d + (hi_d - lo_d) // 2 - 1 + lift
        library = motifs.setdefault(sec.kind, [])
        for ph in range(max(1, sec.bars // phrase_bars)):
            if library and (ph % 2 == 1 or rng.random() < 0.4):  # repeat a motif with new words
                rhythm, shape = library[int(rng.integers(len(library)))]
                words = _take_line(lines, len(rhythm), rng)[:len(rhythm)]
            else:
                words = _take_line(lines, None, rng)
                melisma = int(rng.integers(0, 3))
                rhythm = _phrase_rhythm(rng, timing.steps, phrase_bars, len(words) + melisma)
                words = words[:len(rhythm)]
                d = center + int(rng.integers(-2, 3))
                shape = []
                for _ in rhythm:
                    shape.append(d)
                    d += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3], p=[.1, .2, .15, .1, .2, .1, .05, .05, .05]))
                    d += int(np.sign(center - d)) if abs(center - d) > 3 else 0
                library.append((rhythm, shape))
            while len(words) < len(rhythm):  # more notes than words: hold a vowel over the extra notes
                words.insert(int(rng.integers(1, len(words) + 1)), "")
            bar0 = ph * phrase_bars
            for (step, length), d, word in zip(rhythm, shape, words):
                bar = bar0 + step // timing.steps
                if bar >= sec.bars:
                    break
                s = step % timing.steps
                chord = _chord_at(sec, bar, s, timing.steps)
                d = int(np.clip(d, lo_d, hi_d))
                if s % (timing.steps // 4) == 0:  # strong beat: snap to a chord tone
                    pcs = chord_pitch_classes(key, mode, chord)
                    for delta in (0, 1, -1, 2, -2):
                        if pitch_of(int(np.clip(d + delta, lo_d, hi_d))) % 12 in pcs:
                            d = int(np.clip(d + delta, lo_d, hi_d))
                            break
                notes.append(SungNote(timing.at(sec, bar, s), length * timing.step * 0.95, float(pitch_of(d)), word))
    return VocalLine("lead", voice, notes)


def _harmony(lead: VocalLine, key: int, mode: str, sections: List[Section], rng) -> VocalLine:
    """A diatonic third above the lead, on chorus notes only."""
    scale = _scale(mode)
    choruses = [(s.start, s.start + 1e9 if k == len(sections) - 1 else sections[k + 1].start)
                for k, s in enumerate(sections) if s.kind == "chorus"]
    out = []
    for n in lead.notes:
        if not any(a <= n.start < b for a, b in choruses):
            continue
        pc = (int(n.pitch) - key) % 12
        deg = scale.index(pc) if pc in scale else 0
        up = (scale[(deg + 2) % 7] - scale[deg]) % 12
        out.append(SungNote(n.start, n.duration, n.pitch + up, n.word))
    voice = dict(lead.voice)
    voice["formant_shift"] = float(np.clip(voice["formant_shift"] * rng.uniform(0.95, 1.06), 0.8, 1.25))
    return VocalLine("harmony", voice, out, gain_db=float(rng.uniform(-10, -5)),
                     pan=float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)))


def _is_female(voice: Dict) -> bool:
    name = voice["name"]
    return "+f" in name or name in ("slt",) or voice.get("formant_shift", 1.0) > 1.12


def compose(rng: np.random.Generator, min_length: float, soundfonts: Sequence[str], voice: Optional[Dict],
            seed: int = 0, vocals_probability: float = 0.95) -> SongPlan:
    """Compose a song of at least ``min_length`` seconds.

    ``voice`` is the lead voice (a :class:`~openunmix_like.synth.voice.VoiceSpec`
    as a dict); ``soundfonts`` the installed soundfont names to draw from.
    """
    style = STYLES[int(rng.integers(len(STYLES)))]
    tempo = float(rng.uniform(*style.tempo))
    key = int(rng.integers(12))
    mode = "minor" if rng.random() < 0.4 else "major"
    swing = float(rng.uniform(*style.swing))
    timing = _Timing(tempo, style.steps, swing)
    # Form: repeat the chosen form until it is long enough.
    form = FORMS[int(rng.integers(len(FORMS)))]
    progressions = {}
    sections: List[Section] = []
    t = 0.0
    while t < min_length or not sections:
        for kind in form:
            if kind not in progressions:
                prog = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
                per_bar = 1 if rng.random() < 0.5 else 2  # chords per bar
                progressions[kind] = (prog, per_bar)
            prog, per_bar = progressions[kind]
            lo, hi = SECTION_LENGTH[kind]
            bars = int(rng.integers(lo, hi + 1)) // 2 * 2 or 2
            halves = []
            for half in range(bars * 2):
                idx = half if per_bar == 2 else half // 2
                halves.append(prog[idx % len(prog)])
            sections.append(Section(kind, t, bars, halves))
            t += bars * timing.bar
            if t >= min_length + 4 * timing.bar:
                break
    length = t
    # Arrangement: which sections each stem plays in.
    def active_for(stem: str, boost: float = 0.0) -> List[int]:
        return [k for k, s in enumerate(sections) if rng.random() < SECTION_ACTIVITY[s.kind][stem] + boost]

    kit = int(rng.choice(style.kits))
    drum_font = str(rng.choice(list(soundfonts)))
    parts = [_drum_part(rng, style, timing, sections, active_for("drums"), drum_font, kit)]
    parts.append(_bass_part(rng, style, timing, key, mode, sections, active_for("bass"),
                            str(rng.choice(list(soundfonts)))))
    n_acc = int(rng.integers(3, 6))
    beds = ["keys", "strum", "pad"]
    roles = [beds[int(rng.integers(3))]]
    others = [r for r in ROLES if r != roles[0]]
    roles += list(rng.choice(others, size=n_acc - 1, replace=False))
    for number, role in enumerate(roles):
        active = active_for("other", 0.1 if number == 0 else -0.1)
        if role == "counter":
            active = [k for k in active if sections[k].kind in ("intro", "bridge", "break", "outro", "chorus")]
        parts.append(_accompaniment(rng, role, style, timing, key, mode, sections, active,
                                    str(rng.choice(list(soundfonts))), number))
    for part in parts:
        part.pan = float(rng.normal(0, 0.45 if part.stem == "other" else 0.05))
        if part.stem == "other":
            part.pan = float(np.clip(part.pan, -0.9, 0.9))
        part.width = float(rng.uniform(0.5, 1.0))
        part.gain_db = float(rng.uniform(-4, 3))
    vocals: List[VocalLine] = []
    if voice is not None and rng.random() < vocals_probability:
        active = active_for("vocals")
        if not any(sections[k].kind != "intro" for k in active):
            active = [k for k, s in enumerate(sections) if s.kind in ("verse", "chorus")]
        low, high = (55, 76) if _is_female(voice) else (45, 67)
        lead = _melody_line(rng, timing, key, mode, sections, active, low, high, voice)
        vocals.append(lead)
        if rng.random() < 0.6:
            harmony = _harmony(lead, key, mode, sections, rng)
            if harmony.notes:
                vocals.append(harmony)
    return SongPlan(seed, style.name, tempo, key, mode, swing, kit, sections, parts, vocals, length)


def voice_dict(spec) -> Dict:
    """A :class:`VoiceSpec` as a plain dict (for plans and JSON)."""
    return asdict(spec)
