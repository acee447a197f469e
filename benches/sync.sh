#!/usr/bin/env bash
# End-to-end sync benchmark: photosync's backfill against the Graph emulator, next to what an
# admin would run instead, on the same synthetic tree in the same run. Run from the repository root:
#   bash benches/sync.sh [--n N] [--curl-sample K] [--repeat R] [--no-build] [--only faults]
# Environment (flags win):
#   N=100000            photos in the main tree (target/bench/tree-N, reused when complete)
#   CURL_SAMPLE=5000    files the xargs+curl baseline uploads (0 = all N); rates are comparable
#   REPEAT=3            runs of each rescan and its baseline; the median is reported
#   WORKERS=16          photosync upload.workers for the unthrottled runs
#   RATE_N=1000 RATE_RPS=50 RATE_BURST=50                       step 5 (rate accuracy)
#   THROTTLE_N=600 THROTTLE_LIMIT=20 THROTTLE_RPS=100 THROTTLE_BURST=100   step 6 (429s)
#   THROTTLE_RETRY_AFTER=1   seconds the emulator's 429s ask photosync to wait (step 6)
#   FAULTS_N=200 FAULTS_RPS=8 FAULTS_WORKERS=8                  step 7 (fault storm)
#   ONLY=faults         run that one step (its tree, its row) and nothing else (--only faults)
#   RECORD_ETAG=0       1 = upload.record_etag on (a metadata GET after every upload, which
#                       shares the rate limit: uploads/s is then about half the request rate)
#   NO_BUILD=1          use the binaries in target/release as they are
#   PHOTOSYNC_BIN, EMULATOR_BIN, GEN_TREE_BIN   explicit binaries (imply no build)
# Steps:
#   1. tree: N photos, 20-60 KiB each, distinct bytes, users/DD/DD/user{n}@contoso.com.jpg, each a
#      valid JPEG header (SOI, JFIF APP0, SOF0) and filler (examples/gen_tree.rs);
#   2. cold backfill (fresh ledger, passthrough, no rate limit in effect) vs. the xargs -P 8 curl
#      loop, each against a fresh emulator (--accept-any-target --no-store-bytes
#      --no-record-requests): uploads/s, CPU s (user+sys) per 1,000 uploads, peak RSS;
#   3. unchanged rescan (second backfill) vs. `find -printf '%s %T@ %p\n'` (warm cache): wall s,
#      peak RSS, and how many photo files photosync opened (strace) and read() bytes (rchar);
#   4. touched rescan (`touch` every file, then backfill) vs. `find | xargs -0 b3sum`: wall s;
#   5. rate accuracy: RATE_N new photos at RATE_RPS/RATE_BURST: steady rate / configured, and the
#      emulator's largest count of uploads in any 1 s window (limit: burst + rate);
#   6. throttling: emulator --rate-limit THROTTLE_LIMIT (429 + Retry-After: THROTTLE_RETRY_AFTER)
#      while photosync is configured for THROTTLE_RPS: steady throughput / THROTTLE_LIMIT, and 429s
#      per Retry-After window of the run (its wall time / THROTTLE_RETRY_AFTER): fewer than one;
#   7. fault storm: FAULTS_N photos at FAULTS_RPS/s while the emulator answers 10% 503 with
#      Retry-After: 1, 5% 500, resets 5% and stalls 3% for 3 s (past request_timeout = 1s):
#      uploads/s through the storm as a share of the configured rate (target >= 70%).
# Prints one table and writes target/bench/sync-results.json plus benches/results/sync-DATE.json.
# Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-100000}"
CURL_SAMPLE="${CURL_SAMPLE:-5000}"
REPEAT="${REPEAT:-3}"
WORKERS="${WORKERS:-16}"
RATE_N="${RATE_N:-1000}"
RATE_RPS="${RATE_RPS:-50}"
RATE_BURST="${RATE_BURST:-50}"
THROTTLE_N="${THROTTLE_N:-600}"
THROTTLE_LIMIT="${THROTTLE_LIMIT:-20}"
THROTTLE_RPS="${THROTTLE_RPS:-100}"
THROTTLE_BURST="${THROTTLE_BURST:-100}"
THROTTLE_RETRY_AFTER="${THROTTLE_RETRY_AFTER:-1}"
RECORD_ETAG="${RECORD_ETAG:-0}"
FAULTS_N="${FAULTS_N:-200}"
FAULTS_RPS="${FAULTS_RPS:-8}"
FAULTS_WORKERS="${FAULTS_WORKERS:-8}"
ONLY="${ONLY:-}"
NO_BUILD="${NO_BUILD:-}"
while (($#)); do
  case "$1" in
    --n) N="$2"; shift 2 ;;
    --curl-sample) CURL_SAMPLE="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -z "$ONLY" || "$ONLY" == faults ]] || { echo "--only takes: faults (not '$ONLY')" >&2; exit 2; }
for v in N CURL_SAMPLE REPEAT WORKERS RATE_N RATE_BURST THROTTLE_N THROTTLE_LIMIT THROTTLE_BURST FAULTS_N FAULTS_RPS FAULTS_WORKERS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, not '${!v}'" >&2; exit 2; }
done
((N > 0 && REPEAT > 0)) || { echo "N and REPEAT must be positive" >&2; exit 2; }
[[ "$THROTTLE_RETRY_AFTER" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk "BEGIN { exit !($THROTTLE_RETRY_AFTER > 0) }" ||
  { echo "THROTTLE_RETRY_AFTER must be a positive number of seconds, not '$THROTTLE_RETRY_AFTER'" >&2; exit 2; }
((CURL_SAMPLE == 0 || CURL_SAMPLE > N)) && CURL_SAMPLE="$N"

TENANT=contoso.onmicrosoft.com
CLIENT_ID=11111111-2222-3333-4444-555555555555
SECRET=test-secret
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BENCH="$TARGET_DIR/bench"
mkdir -p "$BENCH"
BENCH="$(cd "$BENCH" && pwd)"
RUN="$BENCH/run"
rm -rf "$RUN"
mkdir -p "$RUN"

# --- tools -------------------------------------------------------------------------------------
missing=()
[[ -x /usr/bin/time ]] || missing+=(time)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
command -v b3sum >/dev/null || missing+=(b3sum)
command -v strace >/dev/null || missing+=(strace)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || true
fi
HASHER="b3sum"
if ! command -v b3sum >/dev/null; then
  if cargo install b3sum --locked --root "$BENCH/b3sum" >&2 && [[ -x "$BENCH/b3sum/bin/b3sum" ]]; then
    HASHER="$BENCH/b3sum/bin/b3sum"
  else
    echo "b3sum unavailable: the touched-rescan baseline falls back to sha256sum" >&2
    HASHER="sha256sum"
  fi
fi
command -v strace >/dev/null && HAVE_STRACE=1 || HAVE_STRACE=""
for tool in /usr/bin/time curl jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

PS_BIN="${PHOTOSYNC_BIN:-}"
EMU_BIN="${EMULATOR_BIN:-}"
GEN_BIN="${GEN_TREE_BIN:-}"
if [[ -z "$PS_BIN$EMU_BIN$GEN_BIN" && -z "$NO_BUILD" ]]; then
  cargo build --release -p photosync -p graph-emulator --bins --example gen_tree >&2
fi
PS_BIN="${PS_BIN:-$TARGET_DIR/release/photosync}"
EMU_BIN="${EMU_BIN:-$TARGET_DIR/release/graph-emulator}"
GEN_BIN="${GEN_BIN:-$TARGET_DIR/release/examples/gen_tree}"
for b in "$PS_BIN" "$EMU_BIN" "$GEN_BIN"; do
  [[ -x "$b" ]] || { echo "missing $b (build it, or drop --no-build)" >&2; exit 1; }
done

# --- processes we start, stopped on every exit ---------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_emulator NAME [FLAG...]: sets EMU_PID and EMU_URL.
start_emulator() {
  local name="$1" out="$RUN/$1.emulator.out" line="" port
  shift
  "$EMU_BIN" --listen 127.0.0.1:0 --accept-any-target --no-store-bytes --no-record-requests "$@" \
    >"$out" 2>"$RUN/$name.emulator.log" &
  EMU_PID=$!
  PIDS+=("$EMU_PID")
  for _ in $(seq 100); do
    line="$(head -n 1 "$out")"
    [[ -n "$line" ]] && break
    kill -0 "$EMU_PID" 2>/dev/null || break
    sleep 0.05
  done
  port="$(sed -n 's|^graph-emulator listening on http://127\.0\.0\.1:\([0-9][0-9]*\)$|\1|p' <<<"$line")"
  [[ -n "$port" ]] || { echo "emulator $name did not start:" >&2; cat "$RUN/$name.emulator.log" >&2; exit 1; }
  EMU_URL="http://127.0.0.1:$port"
}

stop_emulator() {
  kill "$EMU_PID" 2>/dev/null || true
  wait "$EMU_PID" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$EMU_PID" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stats() { curl -sf "$EMU_URL/_emulator/stats"; }

# make_tree DIR COUNT PREFIX: DIR/users holds COUNT photos; reused when DIR/complete says so.
make_tree() {
  local dir="$1" count="$2" prefix="$3" start
  if [[ -f "$dir/complete" && "$(cat "$dir/complete")" == "$count $prefix" ]]; then
    echo "reusing $dir ($count photos)" >&2
    return
  fi
  rm -rf "$dir"
  start=$(date +%s.%N)
  "$GEN_BIN" --root "$dir/users" --count "$count" --prefix "$prefix" >&2
  echo "$count $prefix" >"$dir/complete"
  printf 'generated %s photos in %.1f s (%s)\n' "$count" "$(calc "$(date +%s.%N) - $start")" \
    "$(du -sh "$dir/users" | cut -f1)" >&2
}

# write_config FILE ROOT DATABASE RPS BURST WORKERS [UPLOAD_KEYS] (mode 600: it holds the
# emulator's secret); UPLOAD_KEYS are more lines for [upload].
write_config() {
  install -m 600 /dev/null "$1"
  cat >"$1" <<EOF
[auth]
tenant_id = "$TENANT"
client_id = "$CLIENT_ID"
client_secret = "$SECRET"

[cloud]
login_url = "$EMU_URL"
graph_url = "$EMU_URL"

[state]
database = "$3"

[upload]
workers = $6
requests_per_second = $4
burst = $5
record_etag = $([[ "$RECORD_ETAG" == 1 ]] && echo true || echo false)
${7:-}

[image]
mode = "passthrough"

[[source]]
root = "$2"
target = "user"
key = "upn"
EOF
}

# measure OUT COMMAND...: runs COMMAND under GNU time; OUT.time gets "wall_s user_s sys_s maxrss_kb",
# OUT.io the /proc io counters of COMMAND and its children, OUT.stdout/.stderr its output and
# OUT.rc its exit code.
measure() {
  local out="$1" rc=0 t0 t1
  shift
  t0=$(date +%s%N)
  # shellcheck disable=SC2016 # expanded by the inner sh
  /usr/bin/time -f '%e %U %S %M' -o "$out.time" \
    sh -c '"$@"; rc=$?; cat /proc/$$/io > "$IO_OUT"; exit $rc' sh "$@" \
    >"$out.stdout" 2>"$out.stderr" || rc=$?
  t1=$(date +%s%N)
  echo "$rc" >"$out.rc"
  # GNU time's wall clock has 10 ms steps: take ours (it includes time's own start, ~1 ms).
  # ("Command exited with non-zero status N" may come first: keep the last line.)
  tail -n 1 "$out.time" | awk -v ns="$((t1 - t0))" '{ $1 = sprintf("%.3f", ns / 1e9); print }' >"$out.time.tmp"
  mv "$out.time.tmp" "$out.time"
}
export IO_OUT=/dev/null

# photosync OUT CONFIG [ARG...]: one measured backfill; fails the benchmark on exit codes >= 2.
photosync() {
  local out="$1" cfg="$2"
  shift 2
  IO_OUT="$out.io" measure "$out" env RUST_LOG=warn "$PS_BIN" -c "$cfg" backfill "$@"
  if (($(cat "$out.rc") >= 2)); then
    echo "photosync failed ($out):" >&2
    tail -n 20 "$out.stderr" "$out.stdout" >&2
    exit 1
  fi
}

summary_field() { # FILE WORD: the number before WORD in photosync's summary line
  grep -oE "[0-9]+ $2" "$1.stdout" | head -n 1 | cut -d' ' -f1
}
wall() { cut -d' ' -f1 "$1.time"; }
cpu() { awk '{ print $2 + $3 }' "$1.time"; }
rss_mb() { awk '{ printf "%.1f", $4 / 1024 }' "$1.time"; }
rchar() { awk '$1 == "rchar:" { print $2 }' "$1.io"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
calc() { awk "BEGIN { printf \"%.4f\", $* }"; }

# The fault storm (step 7): sets FLT_UPLOADS, FLT_WALL, FLT_RATE, FLT_SHARE, FLT_STATS.
faults_step() {
  local tree="$BENCH/tree-faults-$FAULTS_N"
  make_tree "$tree" "$FAULTS_N" faults
  echo "== fault storm: $FAULTS_N photos at $FAULTS_RPS/s through 503/500/reset/stall faults" >&2
  start_emulator faults --error-503 0.10 --retry-after 1 --error-500 0.05 --reset 0.05 \
    --stall 0.03 --stall-for 3s --fault-seed 15
  write_config "$RUN/faults.toml" "$tree/users" "$RUN/faults.db" "$FAULTS_RPS" "$FAULTS_RPS" "$FAULTS_WORKERS" \
    "$(printf 'max_attempts = 8\nrequest_timeout = "1s"')"
  photosync "$RUN/faults" "$RUN/faults.toml"
  FLT_STATS="$(stats)"
  stop_emulator
  FLT_UPLOADS="$(summary_field "$RUN/faults" uploaded)"
  [[ "$FLT_UPLOADS" == "$FAULTS_N" ]] || { echo "the storm left photos behind: $(cat "$RUN/faults.stdout")" >&2; exit 1; }
  FLT_WALL="$(wall "$RUN/faults")"
  FLT_RATE="$(calc "$FLT_UPLOADS / $FLT_WALL")"
  FLT_SHARE="$(calc "$FLT_RATE / $FAULTS_RPS")"
}
faults_row() {
  row "faults: uploads/s through the storm (set $FAULTS_RPS)" "$(f "$FLT_RATE" 2)" "configured: $FAULTS_RPS" \
    "$(f "$(calc "$FLT_SHARE * 100")" 1)%" ">= 70%" "$(verdict "$FLT_SHARE >= 0.7")"
}
verdict() { awk "BEGIN { print ($*) ? \"yes\" : \"NO\" }"; }
f() { LC_ALL=C printf "%.${2}f" "$1"; }   # f VALUE DECIMALS
x() { f "$(calc "$1 / $2")" 2; printf 'x'; }  # x A B: the ratio A/B as "1.23x"
row() { printf '| %-42s | %12s | %-30s | %8s | %-17s | %-3s |\n' "$@"; }
header() {
  row measure photosync baseline ratio target met
  row "$(printf '%.0s-' $(seq 42))" "$(printf '%.0s-' $(seq 12))" "$(printf '%.0s-' $(seq 30))" "$(printf '%.0s-' $(seq 8))" \
    "$(printf '%.0s-' $(seq 17))" "---"
}

if [[ "$ONLY" == faults ]]; then
  faults_step
  jq -n --argjson rps "$FAULTS_RPS" --argjson n "$FAULTS_N" --argjson wall "$FLT_WALL" \
    --argjson rate "$FLT_RATE" --argjson share "$FLT_SHARE" --argjson emulator "$FLT_STATS" \
    '{faults: {configured_rps: $rps, photos: $n, wall_s: $wall, uploads_per_s: $rate,
               share_of_configured: $share, emulator: $emulator}}' >"$BENCH/faults-results.json"
  echo
  { header; faults_row; } | tee "$BENCH/faults-results.txt"
  printf '\nresults: %s\n' "$BENCH/faults-results.json"
  exit 0
fi

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== photosync sync benchmark: N=$N, curl sample $CURL_SAMPLE, $(nproc) CPUs, load $LOAD_BEFORE" >&2

# --- 1. trees ----------------------------------------------------------------------------------
TREE="$BENCH/tree-$N"
make_tree "$TREE" "$N" user
ROOT="$TREE/users"
RATE_TREE="$BENCH/tree-rate-$RATE_N"
make_tree "$RATE_TREE" "$RATE_N" rate
THROTTLE_TREE="$BENCH/tree-throttle-$THROTTLE_N"
make_tree "$THROTTLE_TREE" "$THROTTLE_N" throttle
TREE_BYTES="$(find "$ROOT" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }')"
find "$ROOT" -type f -name '*.jpg' -print0 >"$RUN/all.list"
# Every timed run that reads photos starts with them in the page cache: this VM drops idle file
# pages over time (kdamond) even with memory free, so a read right before makes runs comparable.
warm() { xargs -0 cat <"$1" >/dev/null; }

# --- 2. cold backfill vs. the xargs curl loop ----------------------------------------------------
echo "== cold backfill of $N photos" >&2
start_emulator cold
write_config "$RUN/main.toml" "$ROOT" "$RUN/main.db" 100000 100000 "$WORKERS"
warm "$RUN/all.list"
photosync "$RUN/cold" "$RUN/main.toml"
COLD_STATS="$(stats)"
COLD_UPLOADED="$(summary_field "$RUN/cold" uploaded)"
COLD_WALL="$(wall "$RUN/cold")"
COLD_CPU="$(cpu "$RUN/cold")"
COLD_RSS="$(rss_mb "$RUN/cold")"
if [[ "$COLD_UPLOADED" != "$N" || "$(jq .uploads <<<"$COLD_STATS")" != "$N" ]]; then
  echo "cold backfill uploaded $COLD_UPLOADED (emulator: $(jq .uploads <<<"$COLD_STATS")), expected $N:" >&2
  tail -n 5 "$RUN/cold.stdout" >&2
  exit 1
fi
COLD_RATE="$(calc "$N / $COLD_WALL")"
COLD_CPU_K="$(calc "$COLD_CPU * 1000 / $N")"
echo "   $(tail -n 1 "$RUN/cold.stdout")" >&2

echo "== xargs -P 8 curl loop over $CURL_SAMPLE photos" >&2
KEEP_PID="$EMU_PID" KEEP_URL="$EMU_URL"
start_emulator curl
TOKEN="$(curl -sf "$EMU_URL/$TENANT/oauth2/v2.0/token" -d grant_type=client_credentials \
  -d client_id="$CLIENT_ID" -d scope=https://graph.microsoft.com/.default -d client_secret="$SECRET" |
  jq -r .access_token)"
head -z -n "$CURL_SAMPLE" "$RUN/all.list" >"$RUN/curl.list"
warm "$RUN/curl.list"
# shellcheck disable=SC2016 # $0, $T and $URL are expanded by the inner sh, as admins write it
measure "$RUN/curl" env T="$TOKEN" URL="$EMU_URL" sh -c '
  xargs -0 -P 8 -n 1 sh -c '\''curl -s -o /dev/null -X PUT -H "Authorization: Bearer $T" -H "Content-Type: image/jpeg" --data-binary @"$0" "$URL/v1.0/users/$(basename "$0" .jpg)/photo/\$value"'\'' < "$1"
' sh "$RUN/curl.list"
CURL_STATS="$(stats)"
CURL_OK="$(jq .uploads <<<"$CURL_STATS")"
stop_emulator
EMU_PID="$KEEP_PID" EMU_URL="$KEEP_URL"
if [[ "$CURL_OK" != "$CURL_SAMPLE" ]]; then
  echo "curl loop: the emulator stored $CURL_OK of $CURL_SAMPLE photos: $CURL_STATS" >&2
  exit 1
fi
CURL_WALL="$(wall "$RUN/curl")"
CURL_RATE="$(calc "$CURL_SAMPLE / $CURL_WALL")"
CURL_CPU_K="$(calc "$(cpu "$RUN/curl") * 1000 / $CURL_SAMPLE")"

# --- 3. unchanged rescan vs. find ----------------------------------------------------------------
echo "== unchanged rescan ($REPEAT runs each)" >&2
find "$ROOT" -type f -printf '%s %T@ %p\n' >/dev/null
walls="" finds="" rsses=""
for i in $(seq "$REPEAT"); do
  measure "$RUN/find$i" find "$ROOT" -type f -printf '%s %T@ %p\n'
  finds+=" $(wall "$RUN/find$i")"
  photosync "$RUN/unchanged$i" "$RUN/main.toml"
  [[ "$(summary_field "$RUN/unchanged$i" unchanged)" == "$N" && "$(summary_field "$RUN/unchanged$i" uploaded)" == 0 ]] ||
    { echo "unchanged rescan $i did not find $N unchanged photos: $(tail -n 1 "$RUN/unchanged$i.stdout")" >&2; exit 1; }
  walls+=" $(wall "$RUN/unchanged$i")"
  rsses+=" $(rss_mb "$RUN/unchanged$i")"
done
UNCH_WALL="$(median <<<"$walls")"
FIND_WALL="$(median <<<"$finds")"
UNCH_RSS="$(tr ' ' '\n' <<<"$rsses" | sort -g | tail -n 1)"
UNCH_RCHAR="$(rchar "$RUN/unchanged1")"
UNCH_OPENED="null"
if [[ -n "$HAVE_STRACE" ]]; then
  # One more (untimed) rescan under strace: which files did it open?
  RUST_LOG=warn strace -f -qq -e trace=open,openat -o "$RUN/unchanged.strace" \
    "$PS_BIN" -c "$RUN/main.toml" backfill >"$RUN/unchanged-strace.stdout" 2>&1 || true
  UNCH_OPENED="$(grep -c '\.jpg"' "$RUN/unchanged.strace" || true)"
fi
echo "   median $UNCH_WALL s (find $FIND_WALL s); read() bytes $UNCH_RCHAR; photo files opened: $UNCH_OPENED" >&2

# --- 4. touched rescan vs. b3sum -----------------------------------------------------------------
echo "== touched rescan ($REPEAT runs each)" >&2
walls="" hashes="" rsses="" cpus="" hash_cpus=""
for i in $(seq "$REPEAT"); do
  warm "$RUN/all.list"
  # shellcheck disable=SC2016 # expanded by the inner sh
  measure "$RUN/hash$i" sh -c 'xargs -0 "$1" < "$2" > /dev/null' sh "$HASHER" "$RUN/all.list"
  hashes+=" $(wall "$RUN/hash$i")"
  hash_cpus+=" $(cpu "$RUN/hash$i")"
  xargs -0 touch <"$RUN/all.list"
  warm "$RUN/all.list"
  photosync "$RUN/touched$i" "$RUN/main.toml"
  [[ "$(summary_field "$RUN/touched$i" unchanged)" == "$N" && "$(summary_field "$RUN/touched$i" uploaded)" == 0 ]] ||
    { echo "touched rescan $i: $(tail -n 1 "$RUN/touched$i.stdout")" >&2; exit 1; }
  walls+=" $(wall "$RUN/touched$i")"
  cpus+=" $(cpu "$RUN/touched$i")"
  rsses+=" $(rss_mb "$RUN/touched$i")"
done
TOUCH_WALL="$(median <<<"$walls")"
HASH_WALL="$(median <<<"$hashes")"
TOUCH_RSS="$(tr ' ' '\n' <<<"$rsses" | sort -g | tail -n 1)"
TOUCH_CPU="$(median <<<"$cpus")"
HASH_CPU="$(median <<<"$hash_cpus")"
[[ "$(jq .uploads <<<"$(stats)")" == "$N" ]] || { echo "a rescan uploaded something" >&2; exit 1; }
stop_emulator

# --- 5. rate accuracy ----------------------------------------------------------------------------
echo "== rate accuracy: $RATE_N photos at $RATE_RPS/s, burst $RATE_BURST" >&2
start_emulator rate
write_config "$RUN/rate.toml" "$RATE_TREE/users" "$RUN/rate.db" "$RATE_RPS" "$RATE_BURST" "$WORKERS"
photosync "$RUN/rate" "$RUN/rate.toml"
RATE_STATS="$(stats)"
stop_emulator
RATE_UPLOADS="$(jq .uploads <<<"$RATE_STATS")"
RATE_SPAN="$(jq '(.last_upload_at_ms - .first_upload_at_ms) / 1000' <<<"$RATE_STATS")"
RATE_MAX1S="$(jq .max_in_any_1s_window <<<"$RATE_STATS")"
# The quota lets `burst` requests through at once, then one every 1/rate s: the steady rate is
# what came after the burst over the time it took.
RATE_ACHIEVED="$(calc "($RATE_UPLOADS - $RATE_BURST) / $RATE_SPAN")"
RATE_RATIO="$(calc "$RATE_ACHIEVED / $RATE_RPS")"
RATE_WINDOW_LIMIT="$(calc "$RATE_BURST + $RATE_RPS")"

# --- 6. throttling -------------------------------------------------------------------------------
echo "== throttling: emulator --rate-limit $THROTTLE_LIMIT, photosync at $THROTTLE_RPS/s" >&2
start_emulator throttle --rate-limit "$THROTTLE_LIMIT" --retry-after "$THROTTLE_RETRY_AFTER"
write_config "$RUN/throttle.toml" "$THROTTLE_TREE/users" "$RUN/throttle.db" "$THROTTLE_RPS" "$THROTTLE_BURST" "$WORKERS"
photosync "$RUN/throttle" "$RUN/throttle.toml"
THR_STATS="$(stats)"
stop_emulator
THR_UPLOADS="$(jq .uploads <<<"$THR_STATS")"
THR_429="$(jq '.by_status["429"] // 0' <<<"$THR_STATS")"
THR_SPAN="$(jq '(.last_upload_at_ms - .first_upload_at_ms) / 1000' <<<"$THR_STATS")"
THR_FAILED="$(summary_field "$RUN/throttle" failed)"
# The emulator's sliding window lets THROTTLE_LIMIT through at once, then THROTTLE_LIMIT a second.
THR_ACHIEVED="$(calc "($THR_UPLOADS - $THROTTLE_LIMIT) / $THR_SPAN")"
THR_RATIO="$(calc "$THR_ACHIEVED / $THROTTLE_LIMIT")"
THR_WALL="$(wall "$RUN/throttle")"
# The target: fewer than one 429 per Retry-After window, over the whole run.
THR_WINDOWS="$(calc "$THR_WALL / $THROTTLE_RETRY_AFTER")"
THR_429_PER_WINDOW="$(calc "$THR_429 / $THR_WINDOWS")"

# --- 7. fault storm ------------------------------------------------------------------------------
faults_step

# --- results -------------------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
MEM_GIB="$(awk '/MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src emulator Cargo.toml 2>/dev/null || echo +dirty)"
[[ -n "${PHOTOSYNC_BIN:-}" ]] && COMMIT+=" (prebuilt photosync: $PHOTOSYNC_BIN)"
PEAK_RSS="$(printf '%s\n' "$COLD_RSS" "$UNCH_RSS" "$TOUCH_RSS" | sort -g | tail -n 1)"

RESULTS="$BENCH/sync-results.json"
jq -n \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$COMMIT" --arg cpu "$CPU_MODEL" \
  --argjson nproc "$(nproc)" --argjson mem_gib "$MEM_GIB" --arg load "$LOAD_BEFORE" \
  --argjson n "$N" --argjson tree_bytes "$TREE_BYTES" --argjson workers "$WORKERS" \
  --arg hasher "$HASHER" --argjson repeat "$REPEAT" --argjson peak_rss "$PEAK_RSS" \
  --argjson cold_wall "$COLD_WALL" --argjson cold_rate "$COLD_RATE" --argjson cold_cpu "$COLD_CPU" \
  --argjson cold_cpu_k "$COLD_CPU_K" --argjson cold_rss "$COLD_RSS" \
  --argjson curl_sample "$CURL_SAMPLE" --argjson curl_wall "$CURL_WALL" --argjson curl_rate "$CURL_RATE" \
  --argjson curl_cpu_k "$CURL_CPU_K" \
  --argjson unch_wall "$UNCH_WALL" --argjson find_wall "$FIND_WALL" --argjson unch_rss "$UNCH_RSS" \
  --argjson unch_rchar "${UNCH_RCHAR:-null}" --argjson unch_opened "$UNCH_OPENED" \
  --argjson touch_wall "$TOUCH_WALL" --argjson hash_wall "$HASH_WALL" --argjson touch_rss "$TOUCH_RSS" \
  --argjson touch_cpu "$TOUCH_CPU" --argjson hash_cpu "$HASH_CPU" \
  --argjson rate_rps "$RATE_RPS" --argjson rate_burst "$RATE_BURST" --argjson rate_uploads "$RATE_UPLOADS" \
  --argjson rate_span "$RATE_SPAN" --argjson rate_achieved "$RATE_ACHIEVED" --argjson rate_ratio "$RATE_RATIO" \
  --argjson rate_max1s "$RATE_MAX1S" --argjson rate_window_limit "$RATE_WINDOW_LIMIT" \
  --argjson thr_limit "$THROTTLE_LIMIT" --argjson thr_rps "$THROTTLE_RPS" --argjson thr_uploads "$THR_UPLOADS" \
  --argjson thr_429 "$THR_429" --argjson thr_span "$THR_SPAN" --argjson thr_achieved "$THR_ACHIEVED" \
  --argjson thr_ratio "$THR_RATIO" --argjson thr_failed "${THR_FAILED:-0}" \
  --argjson thr_retry_after "$THROTTLE_RETRY_AFTER" --argjson thr_wall "$THR_WALL" \
  --argjson thr_windows "$THR_WINDOWS" --argjson thr_429_per_window "$THR_429_PER_WINDOW" \
  --argjson record_etag "$([[ "$RECORD_ETAG" == 1 ]] && echo true || echo false)" \
  --argjson cold_stats "$COLD_STATS" --argjson rate_stats "$RATE_STATS" --argjson thr_stats "$THR_STATS" \
  --argjson flt_rps "$FAULTS_RPS" --argjson flt_n "$FAULTS_N" --argjson flt_wall "$FLT_WALL" \
  --argjson flt_rate "$FLT_RATE" --argjson flt_share "$FLT_SHARE" --argjson flt_stats "$FLT_STATS" \
  '{
    date: $date, commit: $commit,
    machine: {nproc: $nproc, cpu: $cpu, mem_gib: $mem_gib, load_before: $load},
    n: $n, tree_bytes: $tree_bytes, workers: $workers, repeat: $repeat, peak_rss_mb: $peak_rss,
    record_etag: $record_etag,
    cold: {wall_s: $cold_wall, uploads_per_s: $cold_rate, cpu_s: $cold_cpu,
           cpu_s_per_1000: $cold_cpu_k, peak_rss_mb: $cold_rss,
           baseline: {tool: "xargs -P 8 curl", files: $curl_sample, wall_s: $curl_wall,
                      uploads_per_s: $curl_rate, cpu_s_per_1000: $curl_cpu_k},
           speedup: ($cold_rate / $curl_rate),
           emulator: {max_in_flight: $cold_stats.max_in_flight, max_in_any_1s_window: $cold_stats.max_in_any_1s_window}},
    unchanged: {wall_s: $unch_wall, peak_rss_mb: $unch_rss, read_bytes: $unch_rchar,
                photo_files_opened: $unch_opened,
                baseline: {tool: "find -printf", wall_s: $find_wall}, ratio: ($unch_wall / $find_wall)},
    touched: {wall_s: $touch_wall, cpu_s: $touch_cpu, peak_rss_mb: $touch_rss,
              baseline: {tool: $hasher, wall_s: $hash_wall, cpu_s: $hash_cpu},
              ratio: ($touch_wall / $hash_wall)},
    rate: {configured_rps: $rate_rps, burst: $rate_burst, uploads: $rate_uploads, span_s: $rate_span,
           achieved_rps: $rate_achieved, ratio: $rate_ratio,
           max_in_any_1s_window: $rate_max1s, window_limit: $rate_window_limit},
    throttle: {emulator_limit: $thr_limit, configured_rps: $thr_rps, uploads: $thr_uploads,
               failed: $thr_failed, status_429: $thr_429, span_s: $thr_span,
               retry_after_s: $thr_retry_after, wall_s: $thr_wall,
               retry_after_windows: $thr_windows, status_429_per_window: $thr_429_per_window,
               achieved_rps: $thr_achieved, ratio: $thr_ratio,
               by_status: $thr_stats.by_status},
    faults: {configured_rps: $flt_rps, photos: $flt_n, wall_s: $flt_wall, uploads_per_s: $flt_rate,
             share_of_configured: $flt_share, by_status: $flt_stats.by_status}
  }' >"$RESULTS"
mkdir -p benches/results
cp "$RESULTS" "benches/results/sync-$(date -u +%Y%m%d-%H%M%S).json"

TABLE="$BENCH/sync-results.txt"
{
  printf 'photosync sync benchmark, %s: N = %s photos (%s MiB), %s x %s, %s GiB RAM, load before %s, commit %s\n\n' \
    "$(date -u +%Y-%m-%d)" "$N" "$((TREE_BYTES / 1048576))" "$(nproc)" "$CPU_MODEL" "$MEM_GIB" "$LOAD_BEFORE" "$COMMIT"
  header
  row "cold backfill: uploads/s" "$(f "$COLD_RATE" 0)" "$(f "$CURL_RATE" 0) (curl loop, $CURL_SAMPLE files)" \
    "$(x "$COLD_RATE" "$CURL_RATE")" ">= 5x curl" "$(verdict "$COLD_RATE >= 5 * $CURL_RATE")"
  row "cold backfill: CPU s per 1,000 uploads" "$(f "$COLD_CPU_K" 3)" "$(f "$CURL_CPU_K" 3) (curl loop)" \
    "$(x "$COLD_CPU_K" "$CURL_CPU_K")" "< 0.3" "$(verdict "$COLD_CPU_K < 0.3")"
  row "cold backfill: wall s / CPU s" "$(f "$COLD_WALL" 1) / $(f "$COLD_CPU" 1)" "" "" "" ""
  row "cold backfill: peak RSS MB" "$(f "$COLD_RSS" 1)" "" "" "<= 100" "$(verdict "$COLD_RSS <= 100")"
  row "unchanged rescan: wall s (median of $REPEAT)" "$(f "$UNCH_WALL" 2)" "$(f "$FIND_WALL" 2) (find -printf)" \
    "$(x "$UNCH_WALL" "$FIND_WALL")" "<= 3x and < 2 s" "$(verdict "$UNCH_WALL <= 3 * $FIND_WALL && $UNCH_WALL < 2")"
  row "unchanged rescan: peak RSS MB" "$(f "$UNCH_RSS" 1)" "" "" "<= 100" "$(verdict "$UNCH_RSS <= 100")"
  row "unchanged rescan: photo files opened" "$UNCH_OPENED" "(strace)" "" "0" \
    "$(if [[ "$UNCH_OPENED" == null ]]; then echo "n/a"; else verdict "$UNCH_OPENED == 0"; fi)"
  row "unchanged rescan: MiB read() (rchar)" "$(f "$(calc "${UNCH_RCHAR:-0} / 1048576")" 1)" \
    "tree: $((TREE_BYTES / 1048576)) MiB" "" "" ""
  row "touched rescan: wall s (median of $REPEAT)" "$(f "$TOUCH_WALL" 2)" "$(f "$HASH_WALL" 2) ($(basename "$HASHER") via xargs)" \
    "$(x "$TOUCH_WALL" "$HASH_WALL")" "<= 1.3x" "$(verdict "$TOUCH_WALL <= 1.3 * $HASH_WALL")"
  row "touched rescan: CPU s (median)" "$(f "$TOUCH_CPU" 2)" "$(f "$HASH_CPU" 2)" "$(x "$TOUCH_CPU" "$HASH_CPU")" "" ""
  row "touched rescan: peak RSS MB" "$(f "$TOUCH_RSS" 1)" "" "" "<= 100" "$(verdict "$TOUCH_RSS <= 100")"
  row "rate: steady uploads/s (set $RATE_RPS, burst $RATE_BURST)" "$(f "$RATE_ACHIEVED" 2)" "configured: $RATE_RPS" \
    "$(f "$(calc "$RATE_RATIO * 100")" 1)%" ">= 97%" "$(verdict "$RATE_RATIO >= 0.97")"
  row "rate: most uploads in any 1 s window" "$RATE_MAX1S" "burst + rate: $(f "$RATE_WINDOW_LIMIT" 0)" "" "<= burst + rate" \
    "$(verdict "$RATE_MAX1S <= $RATE_WINDOW_LIMIT")"
  row "throttle: steady uploads/s (set $THROTTLE_RPS)" "$(f "$THR_ACHIEVED" 2)" "emulator allows: $THROTTLE_LIMIT" \
    "$(f "$(calc "$THR_RATIO * 100")" 1)%" ">= 90%" "$(verdict "$THR_RATIO >= 0.9")"
  row "throttle: 429s per Retry-After window" "$THR_429" "$(f "$THR_WINDOWS" 1) windows of $THROTTLE_RETRY_AFTER s" \
    "$(f "$THR_429_PER_WINDOW" 2)" "< 1" "$(verdict "$THR_429_PER_WINDOW < 1")"
  faults_row
} >"$TABLE"
echo
cat "$TABLE"
printf '\nresults: %s (and benches/results/)\n' "$RESULTS"
