#!/usr/bin/env bash
# Downloads, into ./.gl (run from the project root), the Vulkan and GL loader packages that a
# GPU machine with NVIDIA's driver but without the loader library needs (seen on lent H200
# machines). Unpack them there before running bnbench:
#   for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
# `scripts/compare_pytorch.sh` does that itself.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
mkdir -p .gl /tmp/amd64-lists/partial
apt_options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64
    -oDir::State::Lists=/tmp/amd64-lists)
apt-get "${apt_options[@]}" update -qq
(cd .gl && apt-get "${apt_options[@]}" download \
    libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls -1 .gl
