#!/usr/bin/env bash
# Warden against raw ONNX Runtime on the tensor demo models (docs/benchmarks.md,
# "Tensor models"), in one run.
#
#   bench/tensors.sh [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds
#
# For digits-cnn (an image) and sentiment (token ids of 16 with a mask):
#   raw       crates/warden-models/examples/raw_ort.rs: one ONNX Runtime session, one
#             intra-op thread, calls of 1, 8, 32 and 64 rows in a loop; the best batch
#             size counts (what a hand-written server could at most do with that core)
#   warden_1  Warden over HTTPS with an API key, everything on (validation, limits,
#             audit batched, access log to a file), one session per model: wrk, 64 connections,
#             one row per request in JSON (dynamic batching joins them)
#   warden_64 the same, 64 rows per request in the binary tensor data extension
# Server and raw loop on CPU 0, wrk on CPU 1. Reports medians over rounds of rows/s,
# the ratio to raw, and server CPU µs per row (from /proc/PID/stat); results also go
# to bench/results/tensors.json.
set -euo pipefail
# Servers run side by side: each on an ephemeral gRPC port.
export WARDEN_GRPC_LISTEN=127.0.0.1:0
SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)" >&2; exit 1; }
./scripts/setup.sh --runtime-only >/dev/null 2>&1 || ./scripts/setup.sh >/dev/null
cargo build --release -p warden >&2
cargo build --release -p warden-models --example raw_ort >&2
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$root"/.runtime/lib/libonnxruntime.so* | head -1)}"

tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else server_cpu=(); load_cpu=(); fi

# Request bodies from the fixtures: one row as JSON, 64 rows as binary tensor data.
python3 - "$root" "$tmp" <<'PY'
import json, struct, sys
root, tmp = sys.argv[1], sys.argv[2]
for model in ["digits-cnn", "sentiment"]:
    case = json.load(open(f"{root}/models/{model}/fixtures.json"))["cases"][0]["inputs"]
    rows = []
    for t in case:
        per = len(t["data"]) // t["shape"][0]
        row = t["data"][:per]
        shape = t["shape"][1:]
        if t["datatype"] == "INT64" and len(shape) == 1:
            fill = 1 if t["name"] == "attention_mask" else 2
            row = (row + [fill] * 16)[:16]
            shape = [16]
        rows.append((t, row, shape))
    one = {"inputs": [{"name": t["name"], "shape": [1] + s, "datatype": t["datatype"], "data": r} for t, r, s in rows]}
    open(f"{tmp}/{model}-1.json", "w").write(json.dumps(one))
    header, blob = [], b""
    for t, r, s in rows:
        fmt = "<q" if t["datatype"] == "INT64" else "<f"
        part = b"".join(struct.pack(fmt, int(v) if fmt == "<q" else float(v)) for v in r) * 64
        header.append({"name": t["name"], "shape": [64] + s, "datatype": t["datatype"],
                       "parameters": {"binary_data_size": len(part)}})
        blob += part
    head = json.dumps({"inputs": header}).encode()
    open(f"{tmp}/{model}-64.bin", "wb").write(head + blob)
    open(f"{tmp}/{model}-64.len", "w").write(str(len(head)))
PY

port=$((20000 + RANDOM % 10000))
./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1
cat > "$tmp/warden.toml" <<TOML
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[runtime]
sessions_per_model = 1
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
TOML
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/warden.toml" > "$tmp/warden.err" 2>&1 &
# (Logs and the access log go to $tmp/warden.err.)
pid=$!
pids+=($pid)
for _ in $(seq 100); do grep -q '"listening"' "$tmp/warden.err" 2>/dev/null && break; sleep 0.2; done
key="$(grep -o 'wdn_[A-Za-z0-9_]*' "$tmp/warden.err" | head -1)"
[ -n "$key" ] || { cat "$tmp/warden.err" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
load() { # model body-file rows-per-request [header-length] -> "rows_per_s cpu_us_per_row"
  local lua="$tmp/req.lua" type="application/json" framing=""
  if [ -n "${4:-}" ]; then
    type="application/octet-stream"
    framing="wrk.headers[\"Inference-Header-Content-Length\"] = \"$4\""
  fi
  cat > "$lua" <<LUA
wrk.method = "POST"
local f = io.open("$2", "rb"); wrk.body = f:read("*all"); f:close()
wrk.headers["X-API-Key"] = "$key"
wrk.headers["Content-Type"] = "$type"
$framing
LUA
  local before after out reqs
  before=$(cpu_ticks "$pid")
  out=$("${load_cpu[@]}" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -s "$lua" "https://127.0.0.1:$port/v2/models/$1/infer" 2>&1)
  after=$(cpu_ticks "$pid")
  if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "non-2xx answers for $1" >&2; exit 1; fi
  reqs=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  python3 -c "r=float('$reqs')*$3; print(round(r), round(($after-$before)*1e4/(r*$SECONDS_PER_RUN),2))"
}

results="{}"
for model in digits-cnn sentiment; do
  raw=(); one=(); many=(); one_cpu=(); many_cpu=(); raw_cpu=()
  for round in $(seq "$ROUNDS"); do
    line=$("${server_cpu[@]}" ./target/release/examples/raw_ort "models/$model" "$SECONDS_PER_RUN" 16 | tail -1)
    raw+=("$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows_per_s"])')")
    raw_cpu+=("$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_us_per_row"])')")
    read -r r c <<<"$(load "$model" "$tmp/$model-1.json" 1)"; one+=("$r"); one_cpu+=("$c")
    read -r r c <<<"$(load "$model" "$tmp/$model-64.bin" 64 "$(cat "$tmp/$model-64.len")")"; many+=("$r"); many_cpu+=("$c")
    echo "$model round $round: raw ${raw[-1]} rows/s; warden 1-row ${one[-1]} rows/s (${one_cpu[-1]} µs CPU/row); warden 64-row ${many[-1]} rows/s (${many_cpu[-1]} µs CPU/row)" >&2
  done
  results=$(python3 - "$results" "$model" "${raw[*]}" "${raw_cpu[*]}" "${one[*]}" "${one_cpu[*]}" "${many[*]}" "${many_cpu[*]}" <<'PY'
import json, statistics, sys
res = json.loads(sys.argv[1]); model = sys.argv[2]
med = lambda s: statistics.median(float(x) for x in s.split())
raw, raw_cpu, one, one_cpu, many, many_cpu = (med(a) for a in sys.argv[3:9])
res[model] = {"raw_rows_per_s": raw, "raw_cpu_us_per_row": raw_cpu,
              "warden_1row_rows_per_s": one, "warden_1row_cpu_us_per_row": one_cpu, "warden_1row_vs_raw": round(one / raw, 4),
              "warden_64row_rows_per_s": many, "warden_64row_cpu_us_per_row": many_cpu, "warden_64row_vs_raw": round(many / raw, 4)}
print(json.dumps(res))
PY
)
done
mkdir -p bench/results
echo "$results" | python3 -m json.tool | tee bench/results/tensors.json
