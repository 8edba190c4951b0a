#!/usr/bin/env sh
# Debian packages the package and its tests use: ffmpeg decodes mp3/m4a/mp4 and
# .stem.mp4 mixtures (soundfile handles wav/flac/ogg/mp3 itself).
set -e
if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = "0" ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
