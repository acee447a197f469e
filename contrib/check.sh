#!/usr/bin/env bash
# Checks contrib/ against the daemon it is for:
# - the Grafana dashboard is valid JSON and every panel has a query;
# - every metric (and every label="value" pair) that a dashboard query or an alerting rule
#   names exists in a real /metrics answer of `photosync run`, started against the Graph
#   emulator with the bundled example photos;
# - promtool accepts the rules, and the rules' unit tests pass.
# Uses target/debug/photosync and target/debug/graph-emulator (built here when missing).
# Installs jq and promtool when missing (Debian); run as root in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
dashboard=contrib/grafana/photosync.json
rules=contrib/prometheus/photosync-rules.yml
rules_test=contrib/prometheus/photosync-rules.test.yml

die() { echo "contrib/check.sh: $*" >&2; exit 1; }

# --- tools ---
apt_updated=0
apt_install() {
    [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v jq >/dev/null 2>&1 || apt_install jq
command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
# promtool comes with Debian's prometheus package. Installing that package would also install
# and start a Prometheus server on the CI machine, so only promtool is unpacked from it.
promtool="$(command -v promtool || true)"
if [ -z "$promtool" ]; then
    tools="${CARGO_TARGET_DIR:-$root/target}/ci-tools"
    promtool="$tools/usr/bin/promtool"
    if [ ! -x "$promtool" ]; then
        [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
        mkdir -p "$tools"
        (cd "$tools" && apt-get download -qq -o APT::Sandbox::User=root prometheus && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb)
        [ -x "$promtool" ] || die "no promtool in Debian's prometheus package"
    fi
fi
# The metric names are read out of the rules with a YAML parser; use a python3 that has one.
python=""
for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' 2>/dev/null; then python="$py"; break; fi
done
if [ -z "$python" ]; then apt_install python3 python3-yaml; python=/usr/bin/python3; fi

[ -x "$bin/photosync" ] || cargo build --locked -p photosync --bin photosync
[ -x "$bin/graph-emulator" ] || cargo build --locked -p graph-emulator --bin graph-emulator

# --- the dashboard is JSON, every panel has a query ---
jq -e '.panels | length > 0' "$dashboard" >/dev/null || die "$dashboard: not JSON, or no panels"
jq -e '[.panels[] | select(.type != "row") | (.targets // []) | map(.expr // "") | map(select(. != "")) | length > 0] | all' \
    "$dashboard" >/dev/null || die "$dashboard: a panel without a query"

# --- promtool ---
"$promtool" check rules "$rules"
(cd "$(dirname "$rules_test")" && "$promtool" test rules "$(basename "$rules_test")")

# --- a real /metrics answer ---
work="$(mktemp -d)"
emulator_pid=""
daemon_pid=""
cleanup() {
    [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
    [ -z "$emulator_pid" ] || kill "$emulator_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cp -r example/photos "$work/photos"
"$bin/graph-emulator" --listen 127.0.0.1:0 --seed example/seed.json >"$work/emulator.log" 2>&1 &
emulator_pid=$!
emulator_url=""
for _ in $(seq 100); do
    emulator_url="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/emulator.log" | head -n1 || true)"
    [ -n "$emulator_url" ] && break
    kill -0 "$emulator_pid" 2>/dev/null || { cat "$work/emulator.log" >&2; die "the emulator exited"; }
    sleep 0.1
done
[ -n "$emulator_url" ] || { cat "$work/emulator.log" >&2; die "the emulator printed no URL"; }

metrics_port="$(free_port)"
cat >"$work/config.toml" <<EOF
[auth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "test-secret"

[cloud]
login_url = "$emulator_url"
graph_url = "$emulator_url"

[state]
database = "$work/state/photosync.db"

[server]
listen = "127.0.0.1:$metrics_port"

[[source]]
root = "$work/photos/users"
target = "user"
key = "upn"

[[source]]
root = "$work/photos/groups"
target = "group"
key = "id"

[[source]]
root = "$work/photos/contacts"
target = "contact"
key = "id"
EOF
# The config holds the emulator's secret inline: photosync refuses it unless it is private.
chmod 600 "$work/config.toml"
"$bin/photosync" -c "$work/config.toml" run >"$work/daemon.log" 2>&1 &
daemon_pid=$!

# Ready means the first reconcile is done: the example's photos are uploaded.
ready=0
for _ in $(seq 300); do
    if curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; die "photosync run exited"; }
    sleep 0.1
done
[ "$ready" = 1 ] || { cat "$work/daemon.log" >&2; die "photosync run never became ready"; }
curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null || die "/healthz failed"
curl -fsS "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt" || die "/metrics failed"
# The answer must be parseable exposition format, and the example's uploads must show in it.
"$promtool" check metrics <"$work/metrics.txt" || die "/metrics is not valid Prometheus text format"
grep -Eq '^photosync_uploads_total\{result="ok"\} [1-9]' "$work/metrics.txt" \
    || { cat "$work/metrics.txt" >&2; die "no successful upload in /metrics after the first reconcile"; }

# --- every metric and label value the dashboard and the rules name is in that answer ---
"$python" - "$dashboard" "$rules" "$work/metrics.txt" <<'PY'
import json, re, sys
import yaml

dashboard_path, rules_path, metrics_path = sys.argv[1:4]

# Series the daemon exposes: name -> list of label dicts.
series = {}
for line in open(metrics_path):
    if not line.strip() or line.startswith("#"):
        continue
    m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s', line)
    if not m:
        sys.exit(f"unparseable /metrics line: {line!r}")
    labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(3) or ""))
    series.setdefault(m.group(1), []).append(labels)

# Made by Prometheus for every target, never by the daemon.
PROMETHEUS_MADE = {"up"}
# Added by Prometheus to every scraped series.
TARGET_LABELS = {"job", "instance"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}

def metrics_in(expr):
    """(metric, {label: value}) for each selector of a PromQL expression."""
    found = []
    e = re.sub(r'\$\{?\w+\}?', "", expr)              # Grafana variables
    # label lists of by/without/on/ignoring/group_*: not metric names
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', " ", e)
    e = re.sub(r'\[[^\]]*\]', " ", e)                 # range and subquery selectors
    for m in re.finditer(r'([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}', e):
        if m.group(1) and m.group(1) not in KEYWORDS:
            matchers = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"', m.group(2)))
            found.append((m.group(1), matchers))
        elif not m.group(1):
            sys.exit(f"a selector without a metric name in {expr!r}")
    bare = re.sub(r'\{[^}]*\}', " ", e)
    bare = re.sub(r'"[^"]*"', " ", bare)
    for m in re.finditer(r'(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?', bare):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue
        found.append((name, {}))
    return found

queries = []  # (where, expr)
dash = json.load(open(dashboard_path))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        if t.get("expr"):
            queries.append((f"panel {p.get('title')!r}", t["expr"]))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.match(r'\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$', q)
    if m:
        queries.append((f"variable {v.get('name')!r}", m.group(1)))
    elif v.get("type") == "query":
        sys.exit(f"variable {v.get('name')!r}: not a label_values() query: {q!r}")
for g in yaml.safe_load(open(rules_path))["groups"]:
    for r in g["rules"]:
        queries.append((f"rule {r.get('alert') or r.get('record')!r}", r["expr"]))

problems, checked = [], set()
for where, expr in queries:
    names = metrics_in(expr)
    if not names:
        problems.append(f"{where}: names no metric: {expr}")
    for name, matchers in names:
        if name in PROMETHEUS_MADE:
            checked.add(name + " (made by Prometheus)")
            continue
        if name not in series:
            problems.append(f"{where}: {name} is not in /metrics")
            continue
        want = {k: v for k, v in matchers.items() if k not in TARGET_LABELS}
        if not any(all(s.get(k) == v for k, v in want.items()) for s in series[name]):
            problems.append(f"{where}: no {name} series with {want} in /metrics")
            continue
        checked.add(name + "".join(f'{{{k}="{v}"}}' for k, v in sorted(want.items())))
for c in sorted(checked):
    print(f"  in /metrics: {c}")
if problems:
    print("\n".join(dict.fromkeys(problems)), file=sys.stderr)
    sys.exit(1)
print(f"contrib: {len(queries)} queries, every metric they name is in /metrics")
PY
