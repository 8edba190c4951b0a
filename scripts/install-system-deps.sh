#!/usr/bin/env sh
# Debian packages the package and its tests use: ffmpeg decodes mp3/m4a/mp4 and
# .stem.mp4 mixtures (soundfile handles wav/flac/ogg itself); the corpus
# generator umx-synth needs FluidSynth, soundfonts and speech engines, which
# scripts/install-synth-deps.sh installs (it checks first and is quick when done), with
# chromium for the browser test of umx-web.
set -e
exec "$(dirname "$0")/install-synth-deps.sh"
