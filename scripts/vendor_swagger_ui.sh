#!/usr/bin/env bash
# Vendors Swagger UI (the offline /docs page) from the npm registry into
# crates/warden-server/assets/swagger-ui, where the binary embeds it: the
# docs page needs no CDN and no network at run time. npm checks the tarball
# against the registry's sha512 integrity; this script then pins that
# integrity in VERSION so a later re-vendoring shows up in review.
#
#   scripts/vendor_swagger_ui.sh [VERSION]     (default: the pinned one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="${1:-5.35.0}"
dest=crates/warden-server/assets/swagger-ui
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

integrity="$(npm view "swagger-ui-dist@$version" dist.integrity)"
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-"$version".tgz)
mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
  cp "$work/package/$f" "$dest/$f"
done
# Source maps are not shipped; drop the comments that would ask for them.
sed -i -e '/^\/\/# sourceMappingURL=/d' -e '/^\/\*# sourceMappingURL=.*\*\/$/d' \
  "$dest/swagger-ui-bundle.js" "$dest/swagger-ui.css"
printf 'swagger-ui-dist %s\n%s\n' "$version" "$integrity" > "$dest/VERSION"
echo "vendored swagger-ui-dist $version into $dest"
