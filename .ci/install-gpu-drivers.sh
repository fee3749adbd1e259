#!/usr/bin/env bash
# Installs Mesa 25's software GPU drivers (lavapipe for Vulkan, llvmpipe for GL) and the Vulkan
# loader from bookworm-backports, so wgpu finds a real adapter on a machine without a GPU.
# Debian 12's own Mesa 22.3 lavapipe is avoided: it has been seen dropping workgroups of
# long-looping kernels without an error.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if vulkaninfo_present=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null) \
    && dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^25\.'; then
    echo "Mesa software drivers already installed: $vulkaninfo_present"
    exit 0
fi

list=/etc/apt/sources.list.d/bookworm-backports.list
if [ ! -f "$list" ]; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | sudo_if_needed tee "$list" >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed apt-get update -qq
sudo_if_needed apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libegl-mesa0 libgl1-mesa-dri
sudo_if_needed apt-get install -y -qq libvulkan1 libegl1
