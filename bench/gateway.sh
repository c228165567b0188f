#!/usr/bin/env bash
# bench/gateway.sh [SECONDS] [ROUNDS] — Warden's gateway against nginx as a
# TLS reverse proxy, in front of the same fast upstream (docs/benchmarks.md,
# "Gateway"): what the proxy process alone spends per request.
#
#   upstream   bench/floor's OIP v2 route (parses the body, answers a
#              constant one-row prediction), plain HTTP on loopback, CPU 1
#   nginx      TLS termination, proxy_pass with keep-alive to the upstream,
#              buffered access log; one process (master_process off), CPU 0
#   warden     a gateway model (the iris card with [upstream] pointing at the
#              floor) with everything on: TLS, API key, ban check, limits,
#              validation, defenses of the iris card, output policy, batched
#              audit trail, access log; CPU 0
#
# oha on CPU 1, 32 connections, v2 infer with one row, a 2 s warm-up, then
# SECONDS. Reports medians over ROUNDS of requests/s, p50/p99 and CPU µs per
# request of the proxy process (from /proc/PID/stat), and Warden's ratio to
# nginx within each round. Results: bench/results/gateway.json.
set -euo pipefail
export WARDEN_GRPC_LISTEN=127.0.0.1:0

SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
CONNECTIONS=32
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v oha >/dev/null || { echo "installing oha (load generator) from crates.io ..." >&2; cargo install oha --locked >&2; }
command -v nginx >/dev/null || { echo "bench needs nginx (apt-get install nginx-light)" >&2; exit 1; }
./scripts/setup.sh --runtime-only
cargo build --release -p warden -p warden-bench-floor >&2

tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); other_cpu=(taskset -c 1); else server_cpu=(); other_cpu=(); fi

port=$((20000 + RANDOM % 10000))
port_up=$port; port_nginx=$((port + 1)); port_warden=$((port + 2)); port_admin=$((port + 3))
./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1

"${other_cpu[@]}" ./target/release/warden-bench-floor "127.0.0.1:$port_up" 2>"$tmp/up.log" &
pids+=($!)

mkdir -p "$tmp/nginx/logs"
cat > "$tmp/nginx/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log $tmp/nginx/logs/access.log combined buffer=64k flush=1s;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  upstream models { server 127.0.0.1:$port_up; keepalive 64; }
  server {
    listen 127.0.0.1:$port_nginx ssl;
    ssl_certificate $tmp/tls/cert.pem;
    ssl_certificate_key $tmp/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://models;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
"${server_cpu[@]}" nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx.log" &
pids+=($!); nginx_pid=$!

mkdir -p "$tmp/models/iris"
cp models/iris/model.toml models/iris/ood_stats.json "$tmp/models/iris/"
printf '\n[upstream]\nurl = "http://127.0.0.1:%s"\nmodel = "iris"\nmax_in_flight = 64\n' "$port_up" >> "$tmp/models/iris/model.toml"
cat > "$tmp/warden.toml" <<TOML
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port_warden"
[admin]
listen = "127.0.0.1:$port_admin"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[models]
dir = "$tmp/models"
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
TOML
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/warden.toml" >"$tmp/warden.out" 2>"$tmp/warden.log" &
pids+=($!); warden_pid=$!

body='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
for _ in $(seq 1 100); do
  grep -q '"listening"' "$tmp/warden.log" 2>/dev/null && grep -q 'floor listening' "$tmp/up.log" 2>/dev/null \
    && curl -sf --cacert "$tmp/tls/cert.pem" -o /dev/null -d "$body" "https://127.0.0.1:$port_nginx/v2/models/iris/infer" && break
  sleep 0.1
done
key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/warden.out" | head -1)"
[ -n "$key" ] || { echo "warden did not start:" >&2; cat "$tmp/warden.log" >&2; exit 1; }
# The gateway must answer through the upstream before anything is measured.
for _ in $(seq 1 50); do
  curl -sf --cacert "$tmp/tls/cert.pem" -o /dev/null -H "x-api-key: $key" -d "$body" \
    "https://127.0.0.1:$port_warden/v2/models/iris/infer" && break
  sleep 0.2
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_perf() { while pgrep -f "perf record -F 1999 -g -p $warden_pid" >/dev/null; do sleep 0.2; done; }
run() { # name pid url [headers...]
  local name=$1 pid=$2 url=$3; shift 3
  local hdrs=(); for h in "$@"; do hdrs+=(-H "$h"); done
  "${other_cpu[@]}" oha -z 2s -c "$CONNECTIONS" --no-tui --output-format quiet --cacert "$tmp/tls/cert.pem" \
    -m POST -H 'content-type: application/json' "${hdrs[@]}" -d "$body" "$url" >/dev/null 2>&1 || true
  local t0; t0=$(cpu_ticks "$pid")
  # PERF=file: a call-graph profile of Warden's run (perf record) into file;
  # PERF_CALL_GRAPH=dwarf for whole stacks (the release build has no frame pointers).
  if [ -n "${PERF:-}" ] && [ "$name" = warden_gateway ]; then
    perf record -F 1999 --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$pid" -o "$PERF" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
  fi
  "${other_cpu[@]}" oha -z "${SECONDS_PER_RUN}s" -c "$CONNECTIONS" --no-tui --output-format json --cacert "$tmp/tls/cert.pem" \
    -m POST -H 'content-type: application/json' "${hdrs[@]}" -d "$body" "$url" > "$tmp/$name.json"
  local t1; t1=$(cpu_ticks "$pid")
  wait_perf
  echo "{\"round\": $round, \"name\": \"$name\", \"cpu_ticks\": $((t1 - t0)), \"hz\": $(getconf CLK_TCK), \"oha\": $(tr -d '\n' < "$tmp/$name.json")}" >> "$tmp/results.jsonl"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS ..." >&2
  run nginx "$nginx_pid" "https://127.0.0.1:$port_nginx/v2/models/iris/infer"
  run warden_gateway "$warden_pid" "https://127.0.0.1:$port_warden/v2/models/iris/infer" "x-api-key: $key"
done

mkdir -p bench/results
python3 - "$tmp/results.jsonl" "$SECONDS_PER_RUN" "$ROUNDS" "$CONNECTIONS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def fig(r):
    o = r["oha"]; n = sum(o["statusCodeDistribution"].values())
    ok = o["statusCodeDistribution"].get("200", 0)
    return {"rps": o["summary"]["requestsPerSec"], "p50_ms": o["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": o["latencyPercentiles"]["p99"] * 1000,
            "cpu_us_per_req": r["cpu_ticks"] / r["hz"] * 1e6 / max(n, 1), "errors": n - ok}
out = {"seconds": int(sys.argv[2]), "rounds": int(sys.argv[3]), "connections": int(sys.argv[4])}
by = {}
for r in rows:
    by.setdefault(r["name"], []).append(fig(r))
for name, figs in by.items():
    out[name] = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
    out[name]["errors"] = sum(f["errors"] for f in figs)
ratios = [w["cpu_us_per_req"] / n["cpu_us_per_req"] for n, w in zip(by["nginx"], by["warden_gateway"])]
out["cpu_ratio_warden_to_nginx"] = statistics.median(ratios)
out["cpu_ratio_per_round"] = ratios
json.dump(out, open("bench/results/gateway.json", "w"), indent=1)
print(f"{'':16s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU µs/req':>11s} {'errors':>7s}")
for name in ("nginx", "warden_gateway"):
    f = out[name]
    print(f"{name:16s} {f['rps']:9.0f} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['cpu_us_per_req']:11.1f} {f['errors']:7d}")
print(f"Warden's gateway / nginx, CPU per request (median of rounds): {out['cpu_ratio_warden_to_nginx']:.2f}x  (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
PY
