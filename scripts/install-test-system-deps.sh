#!/usr/bin/env bash
# Install what napari's viewer tests need on a headless Debian/Ubuntu machine:
# Xvfb (a virtual display; Qt's offscreen platform has no OpenGL) and the Qt/OpenGL
# system libraries. Does nothing when they are all present.
set -euo pipefail
PACKAGES="xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
libxcb-xfixes0 libegl1 libgl1 libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1"
if ! command -v dpkg-query >/dev/null 2>&1; then
  command -v xvfb-run >/dev/null 2>&1 && exit 0
  echo "install Xvfb (xvfb-run) and the Qt/OpenGL libraries with your system's package manager" >&2
  exit 1
fi
missing=""
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "installing system packages:$missing" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
