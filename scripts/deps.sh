#!/usr/bin/env bash
# Installs the system libraries photosync builds against, when they are missing: libheif (the
# default `heif` feature decodes HEIC/HEIF/AVIF through it) and pkg-config to find it. Debian and
# Ubuntu; as root, or through sudo. Without them, build with `--no-default-features`: HEIC photos
# are then refused with a message naming the format.
set -euo pipefail
if pkg-config --exists libheif 2>/dev/null; then
    exit 0
fi
packages=(libheif-dev pkg-config)
if ! command -v apt-get >/dev/null 2>&1; then
    echo "photosync needs libheif (>= 1.15) and pkg-config; install them with your package manager" >&2
    echo "or build without HEIF support: cargo build --no-default-features" >&2
    exit 1
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
echo "installing ${packages[*]} (needed for HEIC/HEIF/AVIF photos)" >&2
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
