#!/usr/bin/env bash
# Vendors uPlot (the console's time-series charts, MIT) from the npm registry
# into crates/warden-server/assets/uplot, where the binary embeds it: the
# console needs no CDN and no network at run time. npm checks the tarball
# against the registry's sha512 integrity; this script pins that integrity in
# VERSION so a later re-vendoring shows up in review.
#
#   scripts/vendor_uplot.sh [VERSION]     (default: the pinned one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="${1:-1.6.32}"
dest=crates/warden-server/assets/uplot
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

integrity="$(npm view "uplot@$version" dist.integrity)"
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null && tar xzf uplot-"$version".tgz)
mkdir -p "$dest"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
sed -i -e '/^\/\/# sourceMappingURL=/d' "$dest/uPlot.iife.min.js"
printf 'uplot %s\n%s\n' "$version" "$integrity" > "$dest/VERSION"
echo "vendored uplot $version into $dest"
