#!/usr/bin/env bash
# bench/anatomy.sh [SECONDS] [ROUNDS] — where a request's CPU goes, against
# the floor (docs/benchmarks.md, "Anatomy of a request").
#
# Three servers, one at a time on CPU 0, each under wrk on CPU 1 (64
# connections, POST /v1/models/iris:predict with one row, HTTPS, a 2 s
# warm-up, then SECONDS):
#
#   floor      bench/floor: TLS, HTTP, the JSON body parsed, a constant answer
#   warden     the iris demo model with everything on (API key, limits that
#              never refuse, validation, defenses, output policy, batched
#              audit trail, metrics, access log)
#   audit_off  the same with [audit] enabled = false
#
# For each round and server: server CPU µs per request (/proc/PID/stat),
# system calls per request (perf stat on the syscalls tracepoints, when perf
# can read them), and for Warden its resident memory by mapping after the
# run. With PERF_RECORD=1 the last round also records a perf profile of
# each Warden (bench/results/anatomy-<name>.perf.data) for
# `perf report --sort dso,sym`. Medians over ROUNDS go to
# bench/results/anatomy.json.
set -euo pipefail
export WARDEN_GRPC_LISTEN=127.0.0.1:0

SECONDS_PER_RUN="${1:-8}"
ROUNDS="${2:-3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)" >&2; exit 1; }
./scripts/setup.sh --runtime-only
cargo build --release -p warden -p warden-bench-floor >&2
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$root"/.runtime/lib/libonnxruntime.so* | head -1)}"

tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else server_cpu=(); load_cpu=(); fi
perf_stat=()
if command -v perf >/dev/null && perf stat -e 'syscalls:sys_enter_writev' -- true >/dev/null 2>&1; then
  perf_stat=(perf stat -e 'syscalls:sys_enter_*')
fi
mkdir -p bench/results
./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1
mkdir -p "$tmp/models" && cp -r models/iris "$tmp/models/"
port=$((20000 + RANDOM % 10000))

# start NAME -> sets pid and key
start() {
  local name="$1"
  if [ "$name" = floor ]; then
    "${server_cpu[@]}" ./target/release/warden-bench-floor "127.0.0.1:$port" "$tmp/tls/cert.pem" "$tmp/tls/key.pem" 2>"$tmp/$name.err" &
    pid=$!
    key=none
    for _ in $(seq 50); do grep -q listening "$tmp/$name.err" 2>/dev/null && return; sleep 0.1; done
    echo "the floor did not start" >&2; exit 1
  fi
  local extra=""
  [ "$name" = audit_off ] && extra=$'[audit]\nenabled = false'
  rm -rf "$tmp/data-$name"
  cat > "$tmp/$name.toml" <<TOML
data_dir = "$tmp/data-$name"
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[models]
dir = "$tmp/models"
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
$extra
TOML
  "${server_cpu[@]}" ./target/release/warden serve --config "$tmp/$name.toml" > "$tmp/$name.err" 2>&1 &
  pid=$!
  for _ in $(seq 150); do grep -q '"listening"' "$tmp/$name.err" 2>/dev/null && break; sleep 0.2; done
  key="$(grep -o 'wdn_[A-Za-z0-9_]*' "$tmp/$name.err" | head -1)"
  [ -n "$key" ] || { echo "warden ($name) did not start:" >&2; tail -3 "$tmp/$name.err" >&2; exit 1; }
}

# measure NAME ROUND -> one JSON line
measure() {
  local name="$1" round="$2" url="https://127.0.0.1:$port/v1/models/iris:predict"
  start "$name"
  cat > "$tmp/req.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
wrk.headers["X-API-Key"] = "$key"
wrk.headers["Content-Type"] = "application/json"
LUA
  "${load_cpu[@]}" wrk -t1 -c64 -d2s -s "$tmp/req.lua" "$url" >/dev/null 2>&1
  local watcher=() perf_out="$tmp/$name.perf.txt"
  rm -f "$perf_out"
  if [ "${PERF_RECORD:-}" = 1 ] && [ "$name" != floor ] && [ "$round" = "$ROUNDS" ]; then
    watcher=(perf record -F 2000 -g -o "bench/results/anatomy-$name.perf.data" -p "$pid" -- sleep "$((SECONDS_PER_RUN + 1))")
  elif [ ${#perf_stat[@]} -gt 0 ]; then
    watcher=("${perf_stat[@]}" -o "$perf_out" -p "$pid" -- sleep "$((SECONDS_PER_RUN + 1))")
  fi
  local wpid=""
  if [ ${#watcher[@]} -gt 0 ]; then "${watcher[@]}" >/dev/null 2>&1 & wpid=$!; sleep 0.3; fi
  local before after out
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$("${load_cpu[@]}" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -s "$tmp/req.lua" "$url" 2>&1)
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  local smaps="$tmp/$name.smaps"
  cp "/proc/$pid/smaps" "$smaps"
  [ -n "$wpid" ] && wait "$wpid" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  if echo "$out" | grep -q 'Non-2xx'; then echo "$name: errors" >&2; echo "$out" >&2; exit 1; fi
  echo "$out" > "$tmp/$name.wrk"
  python3 - "$name" "$round" "$before" "$after" "$tmp/$name.wrk" "$perf_out" "$smaps" <<'PY'
import json, re, sys, os
name, rnd, before, after, wrk_out, perf_out, smaps = sys.argv[1:8]
out = open(wrk_out).read()
reqs = int(re.search(r"(\d+) requests in", out).group(1))
# The run's requests are counted by wrk over SECONDS; the perf counters
# span a little more (idle before and after), which only adds epoll waits.
row = {"name": name, "round": int(rnd), "requests": reqs,
       "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))),
       "cpu_us_per_request": round((int(after) - int(before)) * 1e4 / reqs, 2)}
if os.path.exists(perf_out):
    calls = {}
    for line in open(perf_out):
        m = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
        if m:
            n = int(m.group(1).replace(",", ""))
            if n >= reqs / 100:
                calls[m.group(2)] = round(n / reqs, 3)
    row["syscalls_per_request"] = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
if name != "floor":
    rss, cur = {}, None
    for line in open(smaps):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            path = parts[5] if len(parts) > 5 else "[anonymous]"
            cur = os.path.basename(path) if path.startswith("/") else path
        elif line.startswith("Rss:"):
            rss[cur] = rss.get(cur, 0) + int(line.split()[1])
    row["rss_mib"] = round(sum(rss.values()) / 1024, 1)
    row["rss_mib_by_mapping"] = {k: round(v / 1024, 1) for k, v in sorted(rss.items(), key=lambda kv: -kv[1]) if v >= 512}
print(json.dumps(row))
PY
}

rows="$tmp/rows.jsonl"
: > "$rows"
for round in $(seq "$ROUNDS"); do
  for name in floor warden audit_off; do
    measure "$name" "$round" | tee -a "$rows" >&2
  done
done
python3 - "$rows" <<'PY' | tee bench/results/anatomy.json
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: round(statistics.median(xs), 2)
by = {}
for r in rows:
    by.setdefault(r["name"], []).append(r)
rounds = sorted({r["round"] for r in rows})
def ratio(a, b, field):
    per = [next(x for x in by[a] if x["round"] == k)[field] / next(x for x in by[b] if x["round"] == k)[field] for k in rounds]
    return med(per)
summary = {}
for name, rs in by.items():
    s = {"cpu_us_per_request": med([r["cpu_us_per_request"] for r in rs]),
         "requests_per_s": med([r["requests_per_s"] for r in rs])}
    if "syscalls_per_request" in rs[-1]:
        s["syscalls_per_request"] = rs[-1]["syscalls_per_request"]
    if "rss_mib" in rs[-1]:
        s["rss_mib"] = med([r["rss_mib"] for r in rs])
        s["rss_mib_by_mapping"] = rs[-1]["rss_mib_by_mapping"]
    summary[name] = s
summary["ratios"] = {
    "warden_cpu_vs_floor": ratio("warden", "floor", "cpu_us_per_request"),
    "audit_off_cpu_vs_floor": ratio("audit_off", "floor", "cpu_us_per_request"),
    "audit_us_per_request": med([next(x for x in by["warden"] if x["round"] == k)["cpu_us_per_request"]
                                 - next(x for x in by["audit_off"] if x["round"] == k)["cpu_us_per_request"] for k in rounds]),
}
print(json.dumps(summary, indent=1))
PY
