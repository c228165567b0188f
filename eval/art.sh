#!/usr/bin/env bash
# The query-attack evaluation of docs/defenses.md with IBM's Adversarial
# Robustness Toolbox, through Warden's API, in one command:
#
#   eval/art.sh [--quick | --natural-only]
#
# Pinned: ART 1.20.1 and the Python packages below, seeds fixed in
# eval/art_eval.py. Writes eval/results/art.json and the e2e fixture
# crates/warden/tests/e2e/fixtures/hsj_digits.json. About 25 minutes here
# (--quick: 3 digits per attack, no decision-boundary membership attack).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh --runtime-only
cargo build --release -p warden >&2
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install --quiet --disable-pip-version-check adversarial-robustness-toolbox==1.20.1 \
  scikit-learn==1.9.1 scipy==1.17.1 numpy==2.4.6 onnxruntime==1.32.0 requests==2.34.2

tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

copy() { # model name
  mkdir -p "$tmp/models/$2"
  cp -r "models/$1/." "$tmp/models/$2/"
}
strip='/# \[defenses\] begin/,/# \[defenses\] end/d'
open_copy() { # model name: the card without its defenses
  copy "$1" "$2"
  sed -i -e "$strip" -e '/^\[defenses.similarity\]/,$d' "$tmp/models/$2/model.toml"
}
section() { # model table: the card's own section, action set to reject
  awk -v t="[defenses.$2]" '$0 == t {on=1; print; next} on && /^\[/ {on=0} on && !/^# \[defenses\]/ {print}' \
    "models/$1/model.toml" | sed 's/^action = "flag"/action = "reject"/'
}
for m in digits digits-cnn iris breast-cancer; do copy "$m" "$m"; done
open_copy digits digits-open
open_copy digits-cnn digits-cnn-open
open_copy breast-cancer breast-cancer-open
for d in similarity:similarity ood:out_of_distribution squeeze:adversarial prada:extraction; do
  open_copy digits "digits-${d%%:*}"
  { echo; section digits "${d#*:}"; } >> "$tmp/models/digits-${d%%:*}/model.toml"
done
copy digits digits-natural
copy digits-cnn digits-cnn-natural
copy digits digits-budget
printf '\n[budget]\nper_day = 300\n' >> "$tmp/models/digits-budget/model.toml"

port=$((20000 + RANDOM % 10000))
cat > "$tmp/warden.toml" <<TOML
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[grpc]
enabled = false
[models]
dir = "$tmp/models"
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
TOML
./target/release/warden serve --config "$tmp/warden.toml" >"$tmp/out" 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 100); do grep -q '"listening"' "$tmp/log" 2>/dev/null && break; sleep 0.1; done
grep -q '"listening"' "$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
{
  echo "["
  for i in $(seq 1 400); do
    printf '"%s",\n' "$(./target/release/warden keys create --name "k$i" --role predict --config "$tmp/warden.toml" 2>/dev/null)"
  done
  printf '"%s"]\n' "$(./target/release/warden keys create --name last --role predict --config "$tmp/warden.toml" 2>/dev/null)"
} > "$tmp/keys.json"
mkdir -p eval/results
.venv/bin/python eval/art_eval.py "https://localhost:$port" "$tmp/data/tls/ca.pem" "$tmp/keys.json" \
  eval/results/art.json crates/warden/tests/e2e/fixtures/hsj_digits.json "$@"
