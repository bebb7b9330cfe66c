#!/usr/bin/env bash
# The set-up command: installs every Debian 12 package corral needs to build and test,
# then configures and compiles it in ./build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential meson ninja-build pkg-config     # toolchain
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler  # ZeroMQ and protobuf-c
  libsqlite3-dev                                    # the store
  libcriterion-dev                                  # tests
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ -f build/build.ninja ]; then
  meson setup --reconfigure build -Dwerror=true
else
  meson setup build -Dwerror=true
fi
meson compile -C build
