#!/usr/bin/env bash
# Two builds of Warden side by side on the same load, to catch a regression
# (docs/benchmarks.md, "Comparing two builds").
#
#   bench/compare.sh OLD_BINARY NEW_BINARY [SECONDS] [ROUNDS]    defaults: 10 s, 3 rounds
#
# Each round starts one binary at a time (pinned to CPU 0) serving the iris
# demo model (alone, so that an older build reads its card), the same configuration (HTTPS, API key, limits high enough never to
# refuse, audit batched, access log on) and runs wrk on CPU 1: 64 connections,
# POST /v1/models/iris:predict with one row. Reports medians of requests/s and
# server CPU µs per request for each binary, and NEW/OLD ratios.
set -euo pipefail
# Servers run side by side: each on an ephemeral gRPC port.
export WARDEN_GRPC_LISTEN=127.0.0.1:0
old="$1"; new="$2"
SECONDS_PER_RUN="${3:-10}"
ROUNDS="${4:-3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)" >&2; exit 1; }
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$root"/.runtime/lib/libonnxruntime.so* | head -1)}"
tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else server_cpu=(); load_cpu=(); fi
"$new" cert generate --out "$tmp/tls" >/dev/null 2>&1
mkdir -p "$tmp/models" && cp -r "$root/models/iris" "$tmp/models/"
port=$((20000 + RANDOM % 10000))
run() { # binary label -> "requests/s cpu_us_per_request"
  local data="$tmp/data-$2"
  rm -rf "$data"
  cat > "$tmp/$2.toml" <<TOML
data_dir = "$data"
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
TOML
  "${server_cpu[@]}" "$1" serve --config "$tmp/$2.toml" > "$tmp/$2.err" 2>&1 &
  pid=$!
  for _ in $(seq 150); do grep -q '"listening"' "$tmp/$2.err" 2>/dev/null && break; sleep 0.2; done
  local key
  key="$(grep -o 'wdn_[A-Za-z0-9_]*' "$tmp/$2.err" | head -1)"
  [ -n "$key" ] || { echo "$1 did not start:" >&2; tail -3 "$tmp/$2.err" >&2; kill "$pid" 2>/dev/null; exit 1; }
  cat > "$tmp/req.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
wrk.headers["X-API-Key"] = "$key"
wrk.headers["Content-Type"] = "application/json"
LUA
  # Warm-up, then the measured run.
  "${load_cpu[@]}" wrk -t1 -c64 -d2s -s "$tmp/req.lua" "https://127.0.0.1:$port/v1/models/iris:predict" >/dev/null 2>&1
  local before after out reqs
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$("${load_cpu[@]}" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -s "$tmp/req.lua" "https://127.0.0.1:$port/v1/models/iris:predict" 2>&1)
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; exit 1; fi
  reqs=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  python3 -c "r=float('$reqs'); print(round(r), round(($after-$before)*1e4/(r*$SECONDS_PER_RUN),1))"
}
old_r=(); old_c=(); new_r=(); new_c=()
for round in $(seq "$ROUNDS"); do
  read -r r c <<<"$(run "$old" old)"; old_r+=("$r"); old_c+=("$c")
  read -r r c <<<"$(run "$new" new)"; new_r+=("$r"); new_c+=("$c")
  echo "round $round: old ${old_r[-1]} req/s ${old_c[-1]} µs CPU/req; new ${new_r[-1]} req/s ${new_c[-1]} µs CPU/req" >&2
done
python3 - "${old_r[*]}" "${old_c[*]}" "${new_r[*]}" "${new_c[*]}" <<'PY'
import json, statistics, sys
m = lambda s: statistics.median(float(x) for x in s.split())
o_r, o_c, n_r, n_c = (m(a) for a in sys.argv[1:5])
print(json.dumps({"old_requests_per_s": o_r, "old_cpu_us_per_request": o_c,
                  "new_requests_per_s": n_r, "new_cpu_us_per_request": n_c,
                  "requests_per_s_new_vs_old": round(n_r / o_r, 3),
                  "cpu_per_request_new_vs_old": round(n_c / o_c, 3)}, indent=1))
PY
