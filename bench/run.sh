#!/usr/bin/env bash
# Warden vs the floor, side by side in one run (docs/benchmarks.md).
#
#   bench/run.sh [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds
#
# Builds release binaries, then for each round runs oha (64 connections,
# HTTPS, v1 predict on iris) against:
#   floor          bench/floor: bare axum + rustls, parses the same JSON, returns a constant
#   warden         the real server: TLS, API key, validation, ONNX inference, output
#                  policy, access log (to a file)
#   warden_eddsa   the same server, authenticated by an EdDSA JWT from its own /oauth/token
#   warden_rs256   the same server, authenticated by an RS256 JWT from an external issuer (PyJWT)
#   warden_nocache a second server with auth.key_cache_ttl = "0s": every request reads
#                  the key from SQLite (the cost the verified-key cache saves)
#   warden_redis   a third server whose rate limits, quotas and bans live in a local
#                  redis-server (limits.backend = "redis"): the shared limiter's cost
#   warden_audit_off  / warden_audit_sync  the same as warden with the audit trail off,
#                  and with audit.durability = "sync" (warden itself is the default,
#                  "batched"): the audit trail's cost in each mode
#   warden_plain   the same server configuration over plain HTTP on loopback (the TLS cost)
#   warden_open_loop  warden at a fixed 20000 requests/s (oha -q, latency corrected):
#                  latency without coordinated omission
#   reference      the seeds' reference stack: FastAPI + slowapi + an API-key header +
#                  the same scikit-learn RandomForest, under uvicorn over TLS
#                  (bench/reference/, installed with pip into bench/reference/.venv)
#   reference_default_forest / warden_default_forest  the reference stack and Warden
#                  both serving scikit-learn's default RandomForest (100 trees, no depth
#                  limit; bench/reference/default-forest/model.onnx for Warden, everything
#                  on as in warden): the seeds' heavier model on both sides
#   mlserver       Seldon MLServer (bench/mlserver/, installed by scripts/setup.sh into .runtime/mlserver, uvloop
#                  pinned) serving the same RandomForest over the v2 protocol, plain HTTP,
#                  one process
#   def_<model>_<defense>  one more server whose models are iris and digits with no
#                  defense (none) or exactly one (ood, squeeze, prada, similarity): each
#                  defense's latency and CPU against the undefended path of the same model
#                  (the load repeats one row: for similarity's cost on varied traffic and
#                  its memory, `cargo bench -p warden-models --bench similarity`)
# Limits are set high enough never to refuse during the load runs (the limiter
# still runs on every request). Afterwards, a burst of 2000 one-row requests at
# 64 connections against a key limited to 500 rows measures the limiter's
# accuracy (accepted vs limit) with each backend.
# Server pinned to CPU 0, load generator to CPU 1 (when there are 2+ CPUs).
# Reports medians over rounds: requests/s, p50/p99 latency, errors, server CPU
# µs per request (from /proc/PID/stat), idle and loaded RSS; and Warden's
# ratios to the floor. Results also go to bench/results/latest.json.
set -euo pipefail
# Servers run side by side: each on an ephemeral gRPC port.
export WARDEN_GRPC_LISTEN=127.0.0.1:0

SECONDS_PER_RUN="${1:-10}"
ROUNDS="${2:-3}"
CONNECTIONS=64
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v oha >/dev/null || { echo "installing oha (load generator) from crates.io ..." >&2; cargo install oha --locked >&2; }
./scripts/setup.sh
cargo build --release -p warden -p warden-bench-floor >&2
if [ ! -x bench/reference/.venv/bin/uvicorn ]; then
  echo "installing the reference stack (bench/reference/requirements.txt) ..." >&2
  python3 -m venv bench/reference/.venv
  bench/reference/.venv/bin/pip install --quiet --disable-pip-version-check -r bench/reference/requirements.txt >&2
fi

tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else server_cpu=(); load_cpu=(); fi

./target/release/warden cert generate --out "$tmp/tls" >/dev/null 2>&1
port_floor=$((20000 + RANDOM % 10000)); port_warden=$((port_floor + 1)); port_nocache=$((port_floor + 2))
port_redis_warden=$((port_floor + 5)); port_redis=$((port_floor + 7))
command -v redis-server >/dev/null || { echo "bench needs redis-server (apt-get install redis-server)" >&2; exit 1; }
redis-server --port "$port_redis" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
peer() { PYTHONPATH="$root/.runtime/py" python3 "$root/crates/warden/tests/e2e/jwt_peer.py" "$@"; }
mkdir -p "$tmp/pk" && peer keys "$tmp/pk"
config() { # port data-dir admin-port auth-extra limits-extra audit-extra models-dir
  cat <<TOML
data_dir = "$2"
[server]
listen = "127.0.0.1:$1"
[admin]
listen = "127.0.0.1:$3"
[tls]
cert = "$tmp/tls/cert.pem"
key = { file = "$tmp/tls/key.pem" }
[models]
dir = "${7:-$root/models}"
[limits]
${5:-}
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
[limits.keys.acc000000001]
predict = { rate = "1/hour", burst = 500 }
[auth]
${4:-}
[auth.tokens]
lifetime = "24h"
[[auth.jwt]]
name = "bench"
issuer = "https://bench.example"
audience = ["warden"]
algorithms = ["RS256"]
jwks_file = "$tmp/pk/jwks.json"
[audit]
${6:-}
TOML
}
config "$port_warden" "$tmp/data" $((port_floor + 3)) "" > "$tmp/warden.toml"
config "$port_nocache" "$tmp/data-nocache" $((port_floor + 4)) 'key_cache_ttl = "0s"' > "$tmp/nocache.toml"
config "$port_redis_warden" "$tmp/data-redis" $((port_floor + 6)) "" "backend = \"redis\"
redis_url = \"redis://127.0.0.1:$port_redis\"" > "$tmp/redis.toml"
port_audit_off=$((port_floor + 8)); port_audit_sync=$((port_floor + 9))
config "$port_audit_off" "$tmp/data-audit-off" $((port_floor + 10)) "" "" "enabled = false" > "$tmp/audit-off.toml"
config "$port_audit_sync" "$tmp/data-audit-sync" $((port_floor + 11)) "" "" 'durability = "sync"' > "$tmp/audit-sync.toml"
# Model copies with one defense each (the sections come from the calibrated cards).
section() { # card defense -> that [defenses.*] table, up to the next table or the end marker
  awk -v t="[defenses.$2]" '$0 == t {on = 1; print; next} on && (/^\[/ || /^# \[defenses\] end/) {on = 0} on' "$1"
}
defvariant() { # model defense|none|nobatch
  local d="$tmp/defmodels/$1-$2"
  mkdir -p "$d"
  cp -r "models/$1/1" "models/$1/ood_stats.json" "$d/"
  sed '/# \[defenses\] begin/,/# \[defenses\] end/d' "models/$1/model.toml" > "$d/model.toml"
  case "$2" in
    ood) section "models/$1/model.toml" out_of_distribution >> "$d/model.toml" ;;
    squeeze) section "models/$1/model.toml" adversarial >> "$d/model.toml" ;;
    prada) section "models/$1/model.toml" extraction >> "$d/model.toml" ;;
    similarity) section "models/$1/model.toml" similarity >> "$d/model.toml" ;;
    nobatch) sed -i '1i dynamic_batching = false' "$d/model.toml" ;;
  esac
}
for v in iris:none iris:ood iris:prada digits:none digits:ood digits:squeeze digits:prada digits:similarity digits:nobatch \
         breast-cancer:none breast-cancer:nobatch; do
  defvariant "${v%%:*}" "${v#*:}"
done
# scikit-learn's default forest under the iris card, defenses included (everything on).
mkdir -p "$tmp/defmodels/iris-default-forest/1"
cp models/iris/model.toml models/iris/ood_stats.json "$tmp/defmodels/iris-default-forest/"
cp bench/reference/default-forest/model.onnx "$tmp/defmodels/iris-default-forest/1/"
port_def=$((port_floor + 12)); port_ref=$((port_floor + 14)); port_plain=$((port_floor + 15)); port_mls=$((port_floor + 17))
.runtime/mlserver/bin/python bench/mlserver/train.py "$tmp/mlserver"
config "$port_plain" "$tmp/data-plain" $((port_floor + 16)) > "$tmp/plain.toml"
sed -i -e '/^cert = /d' -e '/^key = { file/d' -e 's/^\[tls\]$/[tls]\nenabled = false/' "$tmp/plain.toml"
config "$port_def" "$tmp/data-def" $((port_floor + 13)) "" "" "" "$tmp/defmodels" > "$tmp/def.toml"
client="$(./target/release/warden clients add bench --role predict --config "$tmp/warden.toml" 2>/dev/null)"
client_id="$(sed -n 's/^client_id=//p' <<<"$client")"; client_secret="$(sed -n 's/^client_secret=//p' <<<"$client")"

"${server_cpu[@]}" ./target/release/warden-bench-floor "127.0.0.1:$port_floor" "$tmp/tls/cert.pem" "$tmp/tls/key.pem" 2>"$tmp/floor.log" &
pids+=($!); floor_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/warden.toml" >"$tmp/warden.out" 2>"$tmp/warden.log" &
pids+=($!); warden_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/nocache.toml" >"$tmp/nocache.out" 2>"$tmp/nocache.log" &
pids+=($!); nocache_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/redis.toml" >"$tmp/redis.out" 2>"$tmp/redis.log" &
pids+=($!); redis_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/audit-off.toml" >"$tmp/audit-off.out" 2>"$tmp/audit-off.log" &
pids+=($!); audit_off_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/audit-sync.toml" >"$tmp/audit-sync.out" 2>"$tmp/audit-sync.log" &
pids+=($!); audit_sync_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/def.toml" >"$tmp/def.out" 2>"$tmp/def.log" &
pids+=($!); def_pid=$!
"${server_cpu[@]}" ./target/release/warden serve --config "$tmp/plain.toml" >"$tmp/plain.out" 2>"$tmp/plain.log" &
pids+=($!); plain_pid=$!
(cd "$tmp/mlserver" && MLSERVER_HTTP_PORT=$port_mls MLSERVER_GRPC_PORT=$((port_floor + 18)) \
  exec "${server_cpu[@]}" "$root/.runtime/mlserver/bin/mlserver" start .) >"$tmp/mls.log" 2>&1 &
pids+=($!); mls_pid=$!
(cd bench/reference && exec "${server_cpu[@]}" .venv/bin/uvicorn app:app --host 127.0.0.1 --port "$port_ref" \
  --ssl-keyfile "$tmp/tls/key.pem" --ssl-certfile "$tmp/tls/cert.pem" --log-level warning) >"$tmp/ref.log" 2>&1 &
pids+=($!); ref_pid=$!
port_ref_default=$((port_floor + 19))
(cd bench/reference && REFERENCE_FOREST=default exec "${server_cpu[@]}" .venv/bin/uvicorn app:app --host 127.0.0.1 --port "$port_ref_default" \
  --ssl-keyfile "$tmp/tls/key.pem" --ssl-certfile "$tmp/tls/cert.pem" --log-level warning) >"$tmp/ref-default.log" 2>&1 &
pids+=($!); ref_default_pid=$!

for _ in $(seq 1 100); do
  grep -q '"listening"' "$tmp/warden.log" 2>/dev/null && grep -q '"listening"' "$tmp/nocache.log" 2>/dev/null \
    && grep -q '"listening"' "$tmp/redis.log" 2>/dev/null \
    && grep -q '"listening"' "$tmp/audit-off.log" 2>/dev/null && grep -q '"listening"' "$tmp/audit-sync.log" 2>/dev/null \
    && grep -q '"listening"' "$tmp/def.log" 2>/dev/null && grep -q '"listening"' "$tmp/plain.log" 2>/dev/null \
    && curl -sf -o /dev/null "http://127.0.0.1:$port_mls/v2/models/iris/ready" \
    && curl -sf --cacert "$tmp/tls/cert.pem" -o /dev/null -H 'x-api-key: reference-key' -H 'content-type: application/json' \
         -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}' "https://127.0.0.1:$port_ref/v1/models/iris:predict" \
    && curl -sf --cacert "$tmp/tls/cert.pem" -o /dev/null -H 'x-api-key: reference-key' -H 'content-type: application/json' \
         -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}' "https://127.0.0.1:$port_ref_default/v1/models/iris:predict" \
    && grep -q 'floor listening' "$tmp/floor.log" 2>/dev/null && break
  sleep 0.1
done
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Idle RSS of Warden right after start, before any request (the token
# endpoint's first Argon2 check below takes its 7 MiB until jemalloc's
# decay returns it: see docs).
echo "{\"warden_start_rss_kib\": $(rss_kib "$warden_pid"), \"floor_start_rss_kib\": $(rss_kib "$floor_pid")}" > "$tmp/start.json"
key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/warden.out" | head -1)"
[ -n "$key" ] || { echo "warden did not start:" >&2; cat "$tmp/warden.log" >&2; exit 1; }
nocache_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/nocache.out" | head -1)"
redis_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/redis.out" | head -1)"
audit_off_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/audit-off.out" | head -1)"
audit_sync_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/audit-sync.out" | head -1)"
def_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/def.out" | head -1)"
plain_key="$(grep -o 'wdn_[a-z0-9]*_[A-Za-z0-9]*' "$tmp/plain.out" | head -1)"
first_row() { python3 -c 'import json, sys; print(json.dumps({"instances": [json.load(open(sys.argv[1]))["inputs"][0]]}))' "models/$1/fixtures.json"; }
digits_body="$(first_row digits)"; bc_body="$(first_row breast-cancer)"
# PRADA's state grows with varied queries: fill it (600 random test-like rows per
# model) so the measured queries pay for a realistic nearest-neighbour search.
python3 - "$port_def" "$def_key" "$tmp/tls/cert.pem" <<'PY'
import json, random, ssl, sys, urllib.request
port, key, ca = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
rows = {"iris-prada": [[random.uniform(4.5, 7.5), random.uniform(2.2, 4.2), random.uniform(1.1, 6.5), random.uniform(0.2, 2.4)] for _ in range(600)],
        "digits-prada": [[random.choice([0, 0, 4, 8, 12, 16]) for _ in range(64)] for _ in range(600)]}
for model, xs in rows.items():
    for x in xs:
        req = urllib.request.Request(f"https://127.0.0.1:{port}/v1/models/{model}:predict", method="POST",
                                     data=json.dumps({"instances": [x]}).encode(),
                                     headers={"x-api-key": key, "content-type": "application/json"})
        urllib.request.urlopen(req, context=ctx).read()
PY
eddsa="$(curl -sf --cacert "$tmp/tls/cert.pem" -u "$client_id:$client_secret" -d grant_type=client_credentials \
  "https://127.0.0.1:$port_warden/oauth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
now=$(date +%s)
rs256="$(peer mint "$tmp/pk" RS256 rsa-1 "{\"iss\":\"https://bench.example\",\"aud\":\"warden\",\"sub\":\"bench\",\"iat\":$now,\"exp\":$((now + 86400)),\"scope\":\"predict:*\"}")"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
body='{"instances": [[5.1, 3.5, 1.4, 0.2]]}'

run() { # name pid url [headers...]
  local name=$1 pid=$2 url=$3; shift 3
  local hdrs=(); for h in "$@"; do hdrs+=(-H "$h"); done
  # warm-up
  "${load_cpu[@]}" oha -z 2s -c "${RUN_CONNECTIONS:-$CONNECTIONS}" --no-tui --output-format quiet --cacert "$tmp/tls/cert.pem" \
    -m POST -H 'content-type: application/json' "${hdrs[@]}" -d "${RUN_BODY:-$body}" "$url" >/dev/null 2>&1 || true
  local idle; idle=$(rss_kib "$pid")
  local t0; t0=$(cpu_ticks "$pid")
  local rate=(); if [ -n "${RUN_RATE:-}" ]; then rate=(-q "$RUN_RATE" --latency-correction); fi
  "${load_cpu[@]}" oha -z "${SECONDS_PER_RUN}s" -c "${RUN_CONNECTIONS:-$CONNECTIONS}" "${rate[@]}" --no-tui --output-format json --cacert "$tmp/tls/cert.pem" \
    -m POST -H 'content-type: application/json' "${hdrs[@]}" -d "${RUN_BODY:-$body}" "$url" > "$tmp/$name.json"
  local t1; t1=$(cpu_ticks "$pid")
  local loaded; loaded=$(rss_kib "$pid")
  echo "{\"round\": $round, \"name\": \"$name\", \"idle_rss_kib\": $idle, \"loaded_rss_kib\": $loaded, \"cpu_ticks\": $((t1 - t0)), \"hz\": $(getconf CLK_TCK), \"oha\": $(tr -d '\n' < "$tmp/$name.json")}" >> "$tmp/results.jsonl"
}


for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS ..." >&2
  run floor "$floor_pid" "https://127.0.0.1:$port_floor/v1/models/iris:predict"
  run warden "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/iris:predict" "X-API-Key: $key"
  RUN_BODY="$bc_body" run warden_breast_cancer "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/breast-cancer:predict" "X-API-Key: $key"
  RUN_BODY="$digits_body" run warden_digits "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/digits:predict" "X-API-Key: $key"
  run warden_eddsa "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/iris:predict" "Authorization: Bearer $eddsa"
  run warden_rs256 "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/iris:predict" "Authorization: Bearer $rs256"
  run warden_nocache "$nocache_pid" "https://127.0.0.1:$port_nocache/v1/models/iris:predict" "X-API-Key: $nocache_key"
  run warden_redis "$redis_pid" "https://127.0.0.1:$port_redis_warden/v1/models/iris:predict" "X-API-Key: $redis_key"
  run warden_audit_off "$audit_off_pid" "https://127.0.0.1:$port_audit_off/v1/models/iris:predict" "X-API-Key: $audit_off_key"
  run warden_audit_sync "$audit_sync_pid" "https://127.0.0.1:$port_audit_sync/v1/models/iris:predict" "X-API-Key: $audit_sync_key"
  run reference "$ref_pid" "https://127.0.0.1:$port_ref/v1/models/iris:predict" "X-API-Key: reference-key"
  run reference_default_forest "$ref_default_pid" "https://127.0.0.1:$port_ref_default/v1/models/iris:predict" "X-API-Key: reference-key"
  run warden_default_forest "$def_pid" "https://127.0.0.1:$port_def/v1/models/iris-default-forest:predict" "X-API-Key: $def_key"
  RUN_BODY='{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}' \
    run mlserver "$mls_pid" "http://127.0.0.1:$port_mls/v2/models/iris/infer"
  run warden_plain "$plain_pid" "http://127.0.0.1:$port_plain/v1/models/iris:predict" "X-API-Key: $plain_key"
  RUN_RATE=20000 run warden_open_loop "$warden_pid" "https://127.0.0.1:$port_warden/v1/models/iris:predict" "X-API-Key: $key"
  for v in iris-none iris-ood iris-prada; do
    run "def_${v/-/_}" "$def_pid" "https://127.0.0.1:$port_def/v1/models/$v:predict" "X-API-Key: $def_key"
  done
  for v in digits-none digits-ood digits-squeeze digits-prada digits-similarity digits-nobatch; do
    RUN_BODY="$digits_body" run "def_${v/-/_}" "$def_pid" "https://127.0.0.1:$port_def/v1/models/$v:predict" "X-API-Key: $def_key"
  done
  for v in breast-cancer-none breast-cancer-nobatch; do
    RUN_BODY="$bc_body" run "def_${v//-/_}" "$def_pid" "https://127.0.0.1:$port_def/v1/models/$v:predict" "X-API-Key: $def_key"
  done
  # Batching at one connection: what a lone client pays for the batching wait.
  for v in digits-none digits-nobatch; do
    RUN_CONNECTIONS=1 RUN_BODY="$digits_body" run "def_${v/-/_}_c1" "$def_pid" "https://127.0.0.1:$port_def/v1/models/$v:predict" "X-API-Key: $def_key"
  done
done

# Accuracy: a key limited to 500 rows (burst 500, refilling 1 an hour), hit by
# 2000 one-row requests over 64 connections, on each backend.
accuracy() { # data-dir port
  local secret; secret="$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 43)"
  # The key is inserted with a known id so the config's per-key override applies.
  python3 - "$1/warden.db" "$secret" <<'PY'
import hashlib, sqlite3, sys, time
db, secret = sys.argv[1], sys.argv[2]
h = hashlib.sha256(b"warden-api-key-v1\0" + secret.encode()).digest()
c = sqlite3.connect(db)
c.execute("INSERT OR REPLACE INTO api_keys (id, name, role, secret_hash, created_at) VALUES (?, 'accuracy', 'predict', ?, ?)",
          ("acc000000001", h, int(time.time())))
c.commit()
PY
  "${load_cpu[@]}" oha -n 2000 -c "$CONNECTIONS" --no-tui --output-format json --cacert "$tmp/tls/cert.pem" \
    -m POST -H 'content-type: application/json' -H "X-API-Key: wdn_acc000000001_$secret" -d "$body" \
    "https://127.0.0.1:$2/v1/models/iris:predict" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))'
}
echo "{\"memory\": $(accuracy "$tmp/data" "$port_warden"), \"redis\": $(accuracy "$tmp/data-redis" "$port_redis_warden"), \"limit\": 500, \"sent\": 2000}" > "$tmp/accuracy.json"

mkdir -p bench/results
python3 - "$tmp/results.jsonl" "$tmp/start.json" "$SECONDS_PER_RUN" "$ROUNDS" "$CONNECTIONS" "$tmp/accuracy.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
accuracy = json.load(open(sys.argv[6]))
start = json.load(open(sys.argv[2]))
secs, rounds, conns = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# oha cancels the requests still in flight when the run's time is up and
# counts them as "aborted due to deadline": that is the load generator
# stopping, not a server error, so it is reported apart.
ABORTED = "aborted due to deadline"

def measure(r):
    o = r["oha"]
    codes = o.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    errs = dict(o.get("errorDistribution", {}))
    aborted = errs.pop(ABORTED, 0)
    return {
        "rps": ok / secs,
        "p50_ms": o["latencyPercentiles"]["p50"] * 1000,
        "p99_ms": o["latencyPercentiles"]["p99"] * 1000,
        "p999_ms": o["latencyPercentiles"]["p99.9"] * 1000,
        "errors": sum(codes.values()) - ok + sum(errs.values()),
        "aborted_at_end": aborted,
        "cpu_us_per_req": r["cpu_ticks"] / r["hz"] * 1e6 / max(ok, 1),
        "loaded_rss_mib": r["loaded_rss_kib"] / 1024,
    }

per = {(r["round"], r["name"]): measure(r) for r in rows}
def summary(name):
    ms = [m for (_, n), m in per.items() if n == name]
    out = {k: statistics.median(m[k] for m in ms) for k in ms[0] if k not in ("errors", "aborted_at_end")}
    out["errors"] = sum(m["errors"] for m in ms)
    out["aborted_at_end"] = sum(m["aborted_at_end"] for m in ms)
    return out
NAMES = ("floor", "warden", "warden_breast_cancer", "warden_digits", "warden_eddsa", "warden_rs256", "warden_nocache", "warden_redis",
         "warden_audit_off", "warden_audit_sync", "reference", "reference_default_forest", "warden_default_forest", "mlserver", "warden_plain", "warden_open_loop")
DEFENSES = ("def_iris_none", "def_iris_ood", "def_iris_prada",
            "def_digits_none", "def_digits_ood", "def_digits_squeeze", "def_digits_prada", "def_digits_similarity")
BATCHING = (("digits", "def_digits_none", "def_digits_nobatch"),
            ("breast-cancer", "def_breast_cancer_none", "def_breast_cancer_nobatch"),
            ("digits, 1 connection", "def_digits_none_c1", "def_digits_nobatch_c1"))
summaries = {n: summary(n) for n in NAMES + DEFENSES + tuple(x for _, on, off in BATCHING for x in (on, off))}
floor, warden = summaries["floor"], summaries["warden"]
warden["idle_rss_mib"] = start["warden_start_rss_kib"] / 1024
floor["idle_rss_mib"] = start["floor_start_rss_kib"] / 1024
# Ratios per round (floor and warden measured back to back), then the median:
# the machine's speed drifts between rounds, the ratio much less.
rounds_seen = sorted({r for (r, _) in per})
def ratio(key, a="warden", b="floor"):
    return statistics.median(per[(r, a)][key] / per[(r, b)][key] for r in rounds_seen)
def diff(key, a, b="warden"):
    return statistics.median(per[(r, a)][key] - per[(r, b)][key] for r in rounds_seen)
ratios = {"rps_vs_floor": ratio("rps"), "cpu_per_req_vs_floor": ratio("cpu_us_per_req"), "p99_vs_floor": ratio("p99_ms"),
          "rps_vs_reference": ratio("rps", "warden", "reference"),
          "rps_vs_mlserver": ratio("rps", "warden", "mlserver"),
          "default_forest_rps_vs_reference": ratio("rps", "warden_default_forest", "reference_default_forest"),
          "default_forest_cpu_per_req_vs_reference": ratio("cpu_us_per_req", "warden_default_forest", "reference_default_forest"),
          "tls_cpu_per_req_vs_plain": ratio("cpu_us_per_req", "warden", "warden_plain"),
          "tls_rps_vs_plain": ratio("rps", "warden", "warden_plain"),
          "cpu_per_req_vs_reference": ratio("cpu_us_per_req", "warden", "reference")}
auth = {n: {"rps_vs_api_key": ratio("rps", n, "warden"), "cpu_per_req_vs_api_key": ratio("cpu_us_per_req", n, "warden"),
            "added_cpu_us_per_req": diff("cpu_us_per_req", n), "added_p50_ms": diff("p50_ms", n)}
        for n in ("warden_eddsa", "warden_rs256", "warden_nocache", "warden_redis")}
audit = {n: {"rps_vs_audit_off": ratio("rps", n, "warden_audit_off"), "p99_vs_audit_off": ratio("p99_ms", n, "warden_audit_off"),
             "cpu_per_req_vs_audit_off": ratio("cpu_us_per_req", n, "warden_audit_off")}
         for n in ("warden", "warden_audit_sync")}
defense_cost = {n: {"rps_vs_none": ratio("rps", n, n.rsplit("_", 1)[0] + "_none"),
                    "p50_vs_none": ratio("p50_ms", n, n.rsplit("_", 1)[0] + "_none"),
                    "p99_vs_none": ratio("p99_ms", n, n.rsplit("_", 1)[0] + "_none"),
                    "cpu_per_req_vs_none": ratio("cpu_us_per_req", n, n.rsplit("_", 1)[0] + "_none"),
                    "added_cpu_us_per_req": diff("cpu_us_per_req", n, n.rsplit("_", 1)[0] + "_none")}
                for n in DEFENSES if not n.endswith("_none")}
batching = {label: {"rps_batched_vs_off": ratio("rps", on, off), "cpu_per_req_batched_vs_off": ratio("cpu_us_per_req", on, off),
                    "p99_batched_vs_off": ratio("p99_ms", on, off), "p50_batched_vs_off": ratio("p50_ms", on, off)}
            for label, on, off in BATCHING}
# Issue 22's targets, from this run's ratios (iris, 64 connections, everything on, TLS).
errors_total = sum(summaries[n]["errors"] for n in NAMES if n not in ("reference", "reference_default_forest", "mlserver"))
redis_vs_single = ratio("rps", "warden_redis", "warden")
targets = [
    ("CPU per request <= 2.0x the floor's", ratios["cpu_per_req_vs_floor"] <= 2.0, f"{ratios['cpu_per_req_vs_floor']:.2f}x"),
    ("requests/s >= 50% of the floor's", ratios["rps_vs_floor"] >= 0.50, f"{ratios['rps_vs_floor']:.1%}"),
    ("p99 <= 1.0x the floor's", ratios["p99_vs_floor"] <= 1.0, f"{ratios['p99_vs_floor']:.2f}x"),
    ("audit batched >= 92% of audit off's requests/s", audit["warden"]["rps_vs_audit_off"] >= 0.92,
     f"{audit['warden']['rps_vs_audit_off']:.1%}"),
    ("limits in Redis >= 85% of the memory backend's requests/s (one core; PostgreSQL too: bench/scaleout.sh)",
     redis_vs_single >= 0.85, f"{redis_vs_single:.1%}"),
    ("loaded RSS <= 64 MiB (after the token endpoint has run)", warden["loaded_rss_mib"] <= 64, f"{warden['loaded_rss_mib']:.1f} MiB"),
    (">= 80x the reference stack's requests/s (same 50-tree forest; a guard)", ratios["rps_vs_reference"] >= 80,
     f"{ratios['rps_vs_reference']:.0f}x"),
    ("zero errors (every Warden run)", errors_total == 0, f"{errors_total}"),
]
result = {"seconds": secs, "rounds": rounds, "connections": conns, **summaries, "ratios": ratios, "auth_vs_api_key": auth,
          "limiter_accuracy": accuracy, "audit_vs_off": audit, "defense_cost": defense_cost,
          "batching_vs_off": batching, "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in targets],
          "per_round": [{"round": r, **{n: per[(r, n)] for n in NAMES}} for r in rounds_seen]}
json.dump(result, open("bench/results/latest.json", "w"), indent=1)
print(f"\nv1 predict on iris over HTTPS, {conns} connections, {secs}s x {rounds} rounds (medians)\n")
print(f"{'':20} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'errors':>6} {'CPU us/req':>10} {'idle RSS MiB':>12} {'loaded RSS MiB':>14}")
for name in NAMES:
    s = summaries[name]
    idle = f"{s['idle_rss_mib']:>12.1f}" if "idle_rss_mib" in s else f"{'':>12}"
    print(f"{name:20} {s['rps']:>9.0f} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['p999_ms']:>8.2f} {s['errors']:>6} {s['cpu_us_per_req']:>10.1f} {idle} {s['loaded_rss_mib']:>14.1f}")
print(f"\nwarden over TLS / over plain HTTP: {ratios['tls_rps_vs_plain']:.1%} of requests/s, {ratios['tls_cpu_per_req_vs_plain']:.2f}x CPU per request")
o = summaries["warden_open_loop"]
print(f"open loop at 20000 req/s (latency corrected): p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, p99.9 {o['p999_ms']:.2f} ms, {o['rps']:.0f} req/s served")
print(f"warden / MLServer: {ratios['rps_vs_mlserver']:.0f}x its requests/s")
print(f"warden / reference stack: {ratios['rps_vs_reference']:.0f}x its requests/s at {ratios['cpu_per_req_vs_reference']:.3f}x its CPU per request")
print(f"with scikit-learn's default forest on both sides: {ratios['default_forest_rps_vs_reference']:.0f}x its requests/s "
      f"at {ratios['default_forest_cpu_per_req_vs_reference']:.4f}x its CPU per request")
print(f"warden / floor (median of per-round ratios): {ratios['rps_vs_floor']:.1%} of requests/s, "
      f"{ratios['cpu_per_req_vs_floor']:.2f}x CPU per request, {ratios['p99_vs_floor']:.2f}x p99")
for n, a in auth.items():
    print(f"{n} / warden (API key, cached): {a['rps_vs_api_key']:.1%} of requests/s, {a['cpu_per_req_vs_api_key']:.2f}x CPU per request "
          f"({a['added_cpu_us_per_req']:+.1f} us), p50 {a['added_p50_ms']:+.2f} ms")
for n, a in audit.items():
    mode = "batched (warden)" if n == "warden" else "sync"
    print(f"audit {mode} / audit off: {a['rps_vs_audit_off']:.1%} of requests/s, {a['p99_vs_audit_off']:.2f}x p99, "
          f"{a['cpu_per_req_vs_audit_off']:.2f}x CPU per request")
print(f"\n{'defense':22} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}   vs no defense on the same model")
for n in DEFENSES:
    s = summaries[n]
    c = defense_cost.get(n)
    rel = (f"{c['rps_vs_none']:.1%} req/s, {c['p99_vs_none']:.2f}x p99, {c['cpu_per_req_vs_none']:.2f}x CPU "
           f"({c['added_cpu_us_per_req']:+.1f} us)") if c else "(baseline)"
    print(f"{n:22} {s['rps']:>9.0f} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['cpu_us_per_req']:>10.1f}   {rel}")
print(f"\n{'batching':22} {'req/s on':>9} {'req/s off':>9} {'p99 on':>7} {'p99 off':>7}   batched vs off")
for label, on, off in BATCHING:
    b = batching[label]
    print(f"{label:22} {summaries[on]['rps']:>9.0f} {summaries[off]['rps']:>9.0f} {summaries[on]['p99_ms']:>7.2f} {summaries[off]['p99_ms']:>7.2f}   "
          f"{b['rps_batched_vs_off']:.2f}x req/s, {b['cpu_per_req_batched_vs_off']:.2f}x CPU, {b['p50_batched_vs_off']:.2f}x p50, {b['p99_batched_vs_off']:.2f}x p99")
print("\nissue 22 targets (iris, 64 connections, everything on, TLS; ratios within this run):")
for t, ok, m in targets:
    print(f"  {'met   ' if ok else 'MISSED'} {t}: {m}")
print(f"limiter accuracy, {accuracy['sent']} one-row requests against a limit of {accuracy['limit']} rows: "
      f"memory accepted {accuracy['memory']}, redis accepted {accuracy['redis']}")
print(f"(requests cancelled by oha at the end of each run, not errors: floor {floor['aborted_at_end']}, warden {warden['aborted_at_end']})")
PY
