#!/usr/bin/env bash
# The ML-attack evaluation of docs/defenses.md, in one command:
#
#   eval/run.sh
#
# Builds the release binary, installs the Python side (scikit-learn, onnx,
# onnxruntime, requests) into .venv, starts Warden on loopback with copies of
# the digits model configured for each measurement (eval/attacks.py names
# them), runs the attacks, and writes eval/results/latest.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release -p warden >&2
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install --quiet --disable-pip-version-check scikit-learn onnx onnxruntime requests numpy

tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# Model copies: the digits graph, card and statistics, with one setting changed each.
variant() { # name sed-script
  mkdir -p "$tmp/models/$1"
  cp -r models/digits/1 models/digits/ood_stats.json "$tmp/models/$1/"
  sed -e "$2" models/digits/model.toml > "$tmp/models/$1/model.toml"
}
# Drop every defense section (they sit between the markers), then append one.
strip='/# \[defenses\] begin/,/# \[defenses\] end/d'
variant digits-open "$strip; s/^output = \"label\"/output = \"probabilities\"/; s/^decimals = 2/decimals = 6/"
printf '\n[defenses.extraction]\naction = "reject"\nstandardize = false\n' >> "$tmp/models/digits-open/model.toml"
variant digits-watch "$strip; s/^output = \"label\"/output = \"probabilities\"/; s/^decimals = 2/decimals = 6/"
printf '\n[defenses.extraction]\naction = "flag"\nstandardize = false\n' >> "$tmp/models/digits-watch/model.toml"
variant digits-hard "$strip"
printf '\n[defenses.extraction]\naction = "reject"\nstandardize = false\n' >> "$tmp/models/digits-hard/model.toml"
variant digits-adv "$strip"
grep -A8 '^\[defenses.adversarial\]' models/digits/model.toml | sed 's/^action = "flag"/action = "reject"/' \
  | sed '/^\[defenses.extraction\]/,$d' | sed '/^# \[defenses\] end/d' >> "$tmp/models/digits-adv/model.toml"
variant digits-probs "$strip; s/^output = \"label\"/output = \"probabilities\"/; s/^decimals = 2/decimals = 6/"
variant digits-round "$strip; s/^output = \"label\"/output = \"probabilities\"/; s/^decimals = 2/decimals = 1/"
variant digits-label "$strip"
# iris with its own card's defenses, PRADA set to reject: benign iris traffic.
mkdir -p "$tmp/models/iris-open"
cp -r models/iris/1 models/iris/ood_stats.json "$tmp/models/iris-open/"
awk '/^\[defenses.extraction\]/{e=1} e && /^action = "flag"/{sub(/"flag"/, "\"reject\""); e=0} {print}' \
  models/iris/model.toml > "$tmp/models/iris-open/model.toml"
variant digits-ood "$strip"
grep -A9 '^\[defenses.out_of_distribution\]' models/digits/model.toml | sed 's/^action = "flag"/action = "reject"/' \
  | sed '/^\[defenses.adversarial\]/,$d' >> "$tmp/models/digits-ood/model.toml"

port=$((20000 + RANDOM % 10000))
cat > "$tmp/warden.toml" <<TOML
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[models]
dir = "$tmp/models"
[roles.attacker]
permissions = ["predict:*"]
[limits.rates]
default = { rate = "1000000000/minute", burst = 1000000 }
predict = { rate = "1000000000/minute", burst = 1000000 }
[[limits.quotas]]
role = "attacker"
model = "digits-hard"
per_day = 300
TOML
./target/release/warden serve --config "$tmp/warden.toml" >"$tmp/out" 2>"$tmp/log" &
pid=$!
for _ in $(seq 1 100); do grep -q '"listening"' "$tmp/log" 2>/dev/null && break; sleep 0.1; done
grep -q '"listening"' "$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
key() { ./target/release/warden keys create --name "$1" --role "$2" --config "$tmp/warden.toml" 2>/dev/null; }
{
  echo "{"
  for k in attacker_uniform attacker_papernot attacker_watch adv ood distiller benign_0 benign_1 benign_2 benign_3 benign_4; do
    echo "\"$k\": \"$(key "$k" predict)\","
  done
  echo "\"attacker_hard_papernot\": \"$(key attacker_hard_papernot attacker)\","
  echo "\"attacker_hard\": \"$(key attacker_hard attacker)\""
  echo "}"
} > "$tmp/keys.json"
mkdir -p eval/results
.venv/bin/python eval/attacks.py "https://localhost:$port" "$tmp/data/tls/ca.pem" "$tmp/keys.json" eval/results/latest.json
