#!/usr/bin/env bash
# bench/scaleout.sh [SECONDS] [ROUNDS] — what one replica serves when its
# state is shared (docs/scaling.md): the same Warden, iris over HTTPS with
# everything on, three ways, back to back in each round:
#   single        the embedded default: SQLite store, in-memory limits
#   shared        a replica of a scaled-out deployment: PostgreSQL store
#                 (keys, audit chain) and Redis limits, quotas and bans
#   shared_sync   the same with audit.durability = "sync" (each response
#                 waits for its audit row's PostgreSQL commit)
# Warden is pinned to CPU 0; oha, PostgreSQL and redis-server to CPU 1 (in a
# deployment they are other machines). oha -c 64, one row per request,
# a 2 s warm-up, then SECONDS. Medians over ROUNDS; ratios are computed
# within a round. Results: bench/results/scaleout.json.
set -euo pipefail
# Servers run side by side: each on an ephemeral gRPC port.
export WARDEN_GRPC_LISTEN=127.0.0.1:0

SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
CONNECTIONS=64
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v oha >/dev/null || { echo "installing oha (load generator) from crates.io ..." >&2; cargo install oha --locked >&2; }
command -v redis-server >/dev/null || { echo "bench needs redis-server (apt-get install redis-server)" >&2; exit 1; }
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
[ -x "${pg_bin:-}/initdb" ] || { echo "bench needs PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
./scripts/setup.sh
cargo build --release -p warden >&2

tmp="$(mktemp -d)"
chmod 0711 "$tmp"
pids=()
# initdb refuses root: run PostgreSQL as the postgres user then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$pg_bin/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); other_cpu=(taskset -c 1); else server_cpu=(); other_cpu=(); fi

port=$((20000 + RANDOM % 10000))
port_pg=$((port + 10)); port_redis=$((port + 11))
mkdir -p "$tmp/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$tmp/pg"
as_pg "$pg_bin/initdb" -D "$tmp/pg/data" -U warden --auth=trust >/dev/null
as_pg "${other_cpu[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w \
  -o "-p $port_pg -k $tmp/pg -c listen_addresses=127.0.0.1" start >/dev/null
"${other_cpu[@]}" redis-server --port "$port_redis" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)

./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1
config() { # name port store-table limits-table audit-table
  cat > "$tmp/$1.toml" <<TOML
data_dir = "$tmp/data-$1"
[server]
listen = "127.0.0.1:$2"
[admin]
listen = "127.0.0.1:$(($2 + 100))"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[models]
dir = "$root/models"
[store]
$3
[limits]
$4
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
[audit]
replica = "$1"
$5
TOML
}
pg_url="url = \"postgres://warden@127.0.0.1:$port_pg/postgres\""
redis="backend = \"redis\"
redis_url = \"redis://127.0.0.1:$port_redis\""
config single "$((port + 1))" "" "" ""
config shared "$((port + 2))" "$pg_url" "$redis" ""
config shared_sync "$((port + 3))" "$pg_url" "$redis" 'durability = "sync"'

declare -A pid key url
for name in single shared shared_sync; do
  # One at a time: the first replica on the shared store prints the admin key.
  "${server_cpu[@]}" ./target/release/warden serve --config "$tmp/$name.toml" >"$tmp/$name.out" 2>"$tmp/$name.log" &
  pid[$name]=$!; pids+=($!)
  for _ in $(seq 1 200); do grep -q '"listening"' "$tmp/$name.log" 2>/dev/null && break; sleep 0.05; done
  grep -q '"listening"' "$tmp/$name.log" || { echo "$name did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1; }
  url[$name]="https://127.0.0.1:$(grep -o '"addr":"127.0.0.1:[0-9]*"' "$tmp/$name.log" | head -1 | grep -o '[0-9]*"$' | tr -d '"')/v1/models/iris:predict"
done
key[single]="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/single.out" | head -1)"
key[shared]="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/shared.out" | head -1)"
key[shared_sync]="${key[shared]}"

body='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
: > "$tmp/results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS ..." >&2
  for name in single shared shared_sync; do
    args=(-c "$CONNECTIONS" --no-tui --cacert "$tmp/tls/cert.pem" -m POST -H 'content-type: application/json'
          -H "X-API-Key: ${key[$name]}" -d "$body" "${url[$name]}")
    "${other_cpu[@]}" oha -z 2s --output-format quiet "${args[@]}" >/dev/null 2>&1 || true
    t0=$(cpu_ticks "${pid[$name]}")
    "${other_cpu[@]}" oha -z "${SECONDS_PER_RUN}s" --output-format json "${args[@]}" > "$tmp/run.json"
    t1=$(cpu_ticks "${pid[$name]}")
    echo "{\"round\": $round, \"name\": \"$name\", \"cpu_ticks\": $((t1 - t0)), \"hz\": $(getconf CLK_TCK), \"oha\": $(tr -d '\n' < "$tmp/run.json")}" >> "$tmp/results.jsonl"
  done
done

mkdir -p bench/results
python3 - "$tmp/results.jsonl" bench/results/scaleout.json <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def figures(r):
    s = r["oha"]["summary"]
    codes = r["oha"].get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    return {"rps": s["requestsPerSec"], "p99_ms": r["oha"]["latencyPercentiles"]["p99"] * 1000,
            "errors": sum(v for k, v in codes.items() if k != "200"),
            "cpu_us_per_req": r["cpu_ticks"] / r["hz"] * 1e6 / max(ok, 1)}
names = ["single", "shared", "shared_sync"]
by = {n: [figures(r) for r in rows if r["name"] == n] for n in names}
med = {n: {k: statistics.median(f[k] for f in by[n]) for k in by[n][0]} for n in names}
rounds = sorted({r["round"] for r in rows})
def ratio(a, b, k):
    per = [figures(next(r for r in rows if r["round"] == i and r["name"] == a))[k] /
           figures(next(r for r in rows if r["round"] == i and r["name"] == b))[k] for i in rounds]
    return statistics.median(per)
ratios = {f"{n}_vs_single_{k}": ratio(n, "single", k) for n in names[1:] for k in ("rps", "p99_ms", "cpu_us_per_req")}
json.dump({"medians": med, "ratios": ratios, "rounds": len(rounds)}, open(sys.argv[2], "w"), indent=2)
print(f"{'':14} {'req/s':>9} {'p99 ms':>7} {'CPU µs/req':>11} {'errors':>7}")
for n in names:
    m = med[n]
    print(f"{n:14} {m['rps']:9.0f} {m['p99_ms']:7.2f} {m['cpu_us_per_req']:11.1f} {m['errors']:7.0f}")
for n in names[1:]:
    print(f"{n} / single: {ratios[f'{n}_vs_single_rps']:.1%} req/s, {ratios[f'{n}_vs_single_p99_ms']:.2f}x p99, "
          f"{ratios[f'{n}_vs_single_cpu_us_per_req']:.2f}x CPU per request")
PY
