#!/usr/bin/env bash
# Image pipeline throughput and peak memory: photosync's Pipeline::process against ImageMagick's
#   convert IN -auto-orient -resize 648x648 -strip -quality 88 OUT
# on the large test photos, in the same run, then photosync with crop = "face" (face detection
# on top) against the same two. Run from the repository root:
#   bash benches/image.sh
# Environment:
#   ITERATIONS=10              runs of each photo per tool
#   PHOTOSYNC_TEST_PHOTOS=DIR  the photos folder (default ../shared/photos)
#   PIPELINE_BENCH_BIN=PATH    a prebuilt examples/pipeline_bench (skips the cargo build)
# photosync runs single-threaded (one process, the photo read from disk on every iteration, as in
# the daemon). ImageMagick runs one process per photo, as a script would call it, once with
# MAGICK_THREAD_LIMIT=1 and once with its default threading. "photos/s" is wall-clock; "per
# CPU-s" divides by user+sys time instead, which stays meaningful on a busy machine.
set -euo pipefail

ITERATIONS="${ITERATIONS:-10}"
PHOTOS="${PHOTOSYNC_TEST_PHOTOS:-../shared/photos}"
CONVERT=/usr/bin/convert # /usr/local/bin/convert may be a stand-in: always the Debian one
LARGE=(
  large_kleiber_6028x3391_4.2MiB.jpg
  progressive-portrait_wine_2560x3837.jpg
  xmp-adobergb-icc_canon-eos-t6_2000x1072.jpg
  png-rgba-semitransparent_mate-arc_2140x1200.png
)

missing=()
[[ -x "$CONVERT" ]] || missing+=(imagemagick)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
for photo in "${LARGE[@]}"; do
  [[ -f "$PHOTOS/$photo" ]] || { echo "missing $PHOTOS/$photo (set PHOTOSYNC_TEST_PHOTOS)" >&2; exit 1; }
done

BIN="${PIPELINE_BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
  cargo build --release --example pipeline_bench >&2
  BIN="${CARGO_TARGET_DIR:-target}/release/examples/pipeline_bench"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# measure LABEL COMMAND...: runs COMMAND under GNU time; prints "wall cpu maxrss_kb".
measure() {
  local log="$work/time.log"
  /usr/bin/time -v -o "$log" "$@" >/dev/null
  awk -F': ' '
    /Elapsed \(wall clock\)/ { n = split($2, t, ":"); wall = 0; for (i = 1; i <= n; i++) wall = wall * 60 + t[i] }
    /User time/ { cpu += $2 } /System time/ { cpu += $2 }
    /Maximum resident set size/ { rss = $2 }
    END { printf "%.3f %.3f %d\n", wall, cpu, rss }' "$log"
}

convert_loop='for _ in $(seq "$1"); do '"$CONVERT"' "$2" -auto-orient -resize 648x648 -strip -quality 88 "$3" 2>/dev/null; done'

printf '%s\n' "iterations per photo and tool: $ITERATIONS; $(nproc) CPUs; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "$("$CONVERT" -version | head -1)"
results="$work/results"
for photo in "${LARGE[@]}"; do
  in="$PHOTOS/$photo"
  read -r ps_wall ps_cpu ps_rss < <(measure "$BIN" --iterations "$ITERATIONS" "$in")
  read -r st_wall st_cpu st_rss < <(measure env MAGICK_THREAD_LIMIT=1 bash -c "$convert_loop" _ "$ITERATIONS" "$in" "$work/out.jpg")
  read -r mt_wall mt_cpu mt_rss < <(measure bash -c "$convert_loop" _ "$ITERATIONS" "$in" "$work/out.jpg")
  read -r fc_wall fc_cpu fc_rss < <(measure "$BIN" --crop face --iterations "$ITERATIONS" "$in")
  echo "$photo $ps_wall $ps_cpu $ps_rss $st_wall $st_cpu $st_rss $mt_wall $mt_cpu $mt_rss" >>"$results"
  echo "$photo $fc_wall $fc_cpu $fc_rss $ps_wall $ps_cpu $st_wall $st_cpu" >>"$work/face"
done

awk -v n="$ITERATIONS" '
  function rate(t) { return t > 0 ? n / t : 0 }
  function ratio(a, b) { return b > 0 ? a / b : 0 }
  BEGIN {
    printf "\n%-48s | %21s | %21s | %21s | %13s | %22s\n", "", "photosync", "convert (1 thread)", "convert (default)", "speed-up", "peak RSS MiB"
    printf "%-48s | %10s %10s | %10s %10s | %10s %10s | %6s %6s | %6s %7s %7s\n", "photo", "photos/s", "per CPU-s", "photos/s", "per CPU-s", "photos/s", "per CPU-s", "vs 1t", "vs mt", "ours", "IM 1t", "IM mt"
  }
  {
    printf "%-48s | %10.2f %10.2f | %10.2f %10.2f | %10.2f %10.2f | %5.1fx %5.1fx | %6.0f %7.0f %7.0f\n", $1,
      rate($2), rate($3), rate($5), rate($6), rate($8), rate($9), ratio(rate($2), rate($5)), ratio(rate($2), rate($8)),
      $4 / 1024, $7 / 1024, $10 / 1024
    for (i = 2; i <= 10; i++) sum[i] += $i
    if ($4 > max[4]) max[4] = $4; if ($7 > max[7]) max[7] = $7; if ($10 > max[10]) max[10] = $10
    photos++
  }
  END {
    total = n * photos
    printf "%-48s | %10.2f %10.2f | %10.2f %10.2f | %10.2f %10.2f | %5.1fx %5.1fx | %6.0f %7.0f %7.0f\n", "all four (peak RSS: the largest)",
      total / sum[2], total / sum[3], total / sum[5], total / sum[6], total / sum[8], total / sum[9],
      (total / sum[2]) / (total / sum[5]), (total / sum[2]) / (total / sum[8]), max[4] / 1024, max[7] / 1024, max[10] / 1024
    printf "\nspeed-up = photosync photos/s over convert photos/s (wall clock). Target: >= 2x with lower peak RSS.\n"
  }' "$results"

# crop = "face": the same photos with face detection; overhead is over photosync's own time
# without it (crop = "none", above), in CPU seconds, which a busy machine distorts least.
awk -v n="$ITERATIONS" '
  function rate(t) { return t > 0 ? n / t : 0 }
  BEGIN {
    printf "\n%-48s | %21s | %13s | %15s | %8s\n", "crop = \"face\"", "photosync face", "speed-up", "overhead", "peak RSS"
    printf "%-48s | %10s %10s | %6s %6s | %7s %7s | %8s\n", "photo", "photos/s", "per CPU-s", "vs 1t", "per CPU", "wall", "CPU", "MiB"
  }
  {
    printf "%-48s | %10.2f %10.2f | %5.1fx %5.1fx | %+6.0f%% %+6.0f%% | %8.0f\n", $1, rate($2), rate($3),
      rate($2) / rate($7), rate($3) / rate($8), ($2 / $5 - 1) * 100, ($3 / $6 - 1) * 100, $4 / 1024
    for (i = 2; i <= 8; i++) sum[i] += $i
    if ($4 > max) max = $4
    photos++
  }
  END {
    total = n * photos
    printf "%-48s | %10.2f %10.2f | %5.1fx %5.1fx | %+6.0f%% %+6.0f%% | %8.0f\n", "all four (peak RSS: the largest)",
      total / sum[2], total / sum[3], sum[7] / sum[2], sum[8] / sum[3], (sum[2] / sum[5] - 1) * 100, (sum[3] / sum[6] - 1) * 100, max / 1024
    printf "\nspeed-up vs convert (1 thread), wall and per CPU-s. Targets: >= 2x; overhead <= 30%% over crop = \"none\".\n"
  }' "$work/face"

# Passthrough must stay far below ~0.3 ms of CPU per photo: it only walks the header.
printf '\npassthrough (file read + header check + copy), %s runs each:\n' "$((ITERATIONS * 200))"
"$BIN" --mode passthrough --iterations "$((ITERATIONS * 200))" \
  "$PHOTOS/orient-1-explicit_canon-powershot-s40_480x360.jpg" \
  "$PHOTOS/png-rgb_astronaut_512x512.png" \
  "$PHOTOS/xmp-adobergb-icc_canon-eos-t6_2000x1072.jpg"
