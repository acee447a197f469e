#!/usr/bin/env bash
# Runs every test: installs the system libraries the build needs if they are missing
# (scripts/deps.sh), then `cargo test --workspace` with any extra arguments passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo test --workspace "$@"
