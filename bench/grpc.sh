#!/usr/bin/env bash
# gRPC against REST on the same server, in one run (docs/benchmarks.md,
# "gRPC against REST").
#
#   bench/grpc.sh [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds → bench/results/grpc.json
#
# One Warden (everything on: TLS, API key, validation, limits, audit batched,
# access log) on CPU 0; the load on CPU 1, 64 requests in flight, one row
# per request, the same input both ways:
#   rest  wrk, 64 HTTP/1.1 connections, POST /v2/models/M/infer (JSON)
#   grpc  crates/warden-oip/examples/grpc_load.rs (tonic, one thread),
#         64 calls in flight over 8 HTTP/2 connections, raw contents
# for iris and digits-cnn. Reports medians over rounds of requests/s, server
# CPU µs per request (/proc/PID/stat) and p50/p99 latency, and gRPC/REST ratios.
set -euo pipefail
SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)" >&2; exit 1; }
./scripts/setup.sh --runtime-only >/dev/null 2>&1 || ./scripts/setup.sh >/dev/null
cargo build --release -p warden >&2
cargo build --release -p warden-oip --example grpc_load >&2
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$root"/.runtime/lib/libonnxruntime.so* | head -1)}"
tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else server_cpu=(); load_cpu=(); fi

port=$((20000 + RANDOM % 10000))
./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1
cat > "$tmp/warden.toml" <<TOML
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[grpc]
listen = "127.0.0.1:$((port + 2))"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
TOML
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/warden.toml" > "$tmp/warden.err" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '"listening"' "$tmp/warden.err" 2>/dev/null && break; sleep 0.2; done
key="$(grep -o 'wdn_[A-Za-z0-9_]*' "$tmp/warden.err" | head -1)"
[ -n "$key" ] || { cat "$tmp/warden.err" >&2; exit 1; }

python3 - "$root" "$tmp" <<'PY'
import json, sys
root, tmp = sys.argv[1], sys.argv[2]
bodies = {"iris": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
case = json.load(open(f"{root}/models/digits-cnn/fixtures.json"))["cases"][0]["inputs"][0]
per = len(case["data"]) // case["shape"][0]
bodies["digits-cnn"] = [{"name": case["name"], "shape": [1] + case["shape"][1:], "datatype": "FP32", "data": case["data"][:per]}]
for model, inputs in bodies.items():
    json.dump({"model_name": model, "inputs": inputs}, open(f"{tmp}/{model}.json", "w"))
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rest() { # model -> "req/s cpu_us p50_ms p99_ms"
  cat > "$tmp/req.lua" <<LUA
wrk.method = "POST"
local f = io.open("$tmp/$1.json", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["X-API-Key"] = "$key"
wrk.headers["Content-Type"] = "application/json"
LUA
  local before after out
  before=$(cpu_ticks)
  out=$("${load_cpu[@]}" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" --latency -s "$tmp/req.lua" "https://127.0.0.1:$port/v2/models/$1/infer" 2>&1)
  after=$(cpu_ticks)
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; exit 1; fi
  python3 - "$out" "$before" "$after" "$SECONDS_PER_RUN" <<'PY'
import re, sys
out, before, after, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
def ms(p):
    v, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
print(round(rps), round((after - before) * 1e4 / (rps * secs), 1), ms(50), ms(99))
PY
}
grpc() { # model -> "req/s cpu_us p50_ms p99_ms"
  local before after out
  before=$(cpu_ticks)
  out=$("${load_cpu[@]}" ./target/release/examples/grpc_load "localhost:$((port + 2))" "$tmp/tls/cert.pem" "$key" "$tmp/$1.json" "$SECONDS_PER_RUN" 64 8)
  after=$(cpu_ticks)
  python3 - "$out" "$before" "$after" "$SECONDS_PER_RUN" <<'PY'
import json, sys
r, before, after, secs = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
if r["errors"]:
    sys.exit(f"gRPC errors: {r['errors']}")
rps = r["requests_per_s"]
print(round(rps), round((after - before) * 1e4 / (rps * secs), 1), round(r["p50_ms"], 3), round(r["p99_ms"], 3))
PY
}

results="{}"
for model in iris digits-cnn; do
  rest_lines=(); grpc_lines=()
  for round in $(seq "$ROUNDS"); do
    rest_lines+=("$(rest "$model")")
    grpc_lines+=("$(grpc "$model")")
    echo "$model round $round: rest ${rest_lines[-1]}; grpc ${grpc_lines[-1]} (req/s, CPU µs/req, p50 ms, p99 ms)" >&2
  done
  results=$(python3 - "$results" "$model" "$(printf '%s\n' "${rest_lines[@]}")" "$(printf '%s\n' "${grpc_lines[@]}")" <<'PY'
import json, statistics, sys
res = json.loads(sys.argv[1]); model = sys.argv[2]
def med(block):
    rows = [list(map(float, l.split())) for l in block.strip().splitlines()]
    return [statistics.median(c) for c in zip(*rows)]
rest, grpc = med(sys.argv[3]), med(sys.argv[4])
# Ratios within each round (REST and gRPC back to back), then their median:
# the machine drifts between rounds more than the ratio does.
pairs = list(zip([list(map(float, l.split())) for l in sys.argv[3].strip().splitlines()],
                 [list(map(float, l.split())) for l in sys.argv[4].strip().splitlines()]))
keys = ["requests_per_s", "cpu_us_per_request", "p50_ms", "p99_ms"]
res[model] = {"rest": dict(zip(keys, rest)), "grpc": dict(zip(keys, grpc)),
              "grpc_vs_rest_requests_per_s": round(statistics.median(g[0] / r[0] for r, g in pairs), 3),
              "grpc_vs_rest_cpu_per_request": round(statistics.median(g[1] / r[1] for r, g in pairs), 3)}
print(json.dumps(res))
PY
)
done
mkdir -p bench/results
echo "$results" | python3 -m json.tool | tee bench/results/grpc.json
