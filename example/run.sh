#!/usr/bin/env bash
# Runs photosync's backfill on the bundled example against the local Graph emulator: no tenant
# needed. Builds both binaries, starts the emulator, syncs twice (the second run uploads nothing),
# then stops the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p photosync -p graph-emulator --bins
rm -rf example/state
# The example config holds the emulator's secret inline, so it must be private like any secret.
chmod 600 example/config.toml
./target/release/graph-emulator --listen 127.0.0.1:8650 --seed example/seed.json > example/emulator.log 2>&1 &
emulator=$!
trap 'kill $emulator 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening example/emulator.log && break; sleep 0.1; done
echo "== first backfill: every photo is new"
./target/release/photosync -c example/config.toml backfill
echo
echo "== second backfill: nothing changed, nothing uploaded"
./target/release/photosync -c example/config.toml backfill
echo
echo "== what the emulator received"
curl -s http://127.0.0.1:8650/_emulator/stats
echo
