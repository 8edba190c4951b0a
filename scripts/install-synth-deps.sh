#!/usr/bin/env sh
# Debian packages umx-synth renders with: FluidSynth and General MIDI soundfonts
# (FluidR3, MuseScore General, TimGM6mb), the speech engines the sung voices are
# made from (espeak-ng, flite, festival), plus ffmpeg for the rest of the package
# and chromium, the browser tests/test_web_browser.py drives through Playwright.
# pyworld (the vocoder that re-pitches speech into song) comes from PyPI with the
# "synth" extra: pip install -e ".[synth]".
set -e
need=""
command -v fluidsynth >/dev/null 2>&1 || need="$need fluidsynth"
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need="$need fluid-soundfont-gm"
[ -f /usr/share/sounds/sf3/MuseScore_General_Full.sf3 ] || need="$need musescore-general-soundfont"
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || need="$need timgm6mb-soundfont"
command -v espeak-ng >/dev/null 2>&1 || need="$need espeak-ng"
command -v flite >/dev/null 2>&1 || need="$need flite"
command -v festival >/dev/null 2>&1 || need="$need festival festvox-kallpc16k"
command -v ffmpeg >/dev/null 2>&1 || need="$need ffmpeg"
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" = "0" ] || SUDO="sudo"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
