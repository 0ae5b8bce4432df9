#!/usr/bin/env bash
# Fetch the pinned OHIF v3 viewer (npm package @ohif/app) and unpack its static build.
#
#   bash scripts/ohif.sh [FOLDER]     default FOLDER: .cache/ohif in the repository
#
# The package's dist/ is a ready static site (index.html, app-config.js, bundles): no build and
# none of its npm dependencies are needed, so `npm pack` fetches the one tarball from the npm
# registry (npm checks it against the registry's integrity hash) and this script checks its SHA-1
# against the pin below. The site lands in FOLDER/dist with a stamp FOLDER/dist/.ainode-ohif holding
# the version; a FOLDER/dist whose stamp names the pinned version is kept as it is (no network).
# Whoever serves it replaces app-config.js (the data source) when serving: the files stay as shipped.
# Prints the dist folder's path on stdout.
set -euo pipefail

OHIF_VERSION=3.13.2
OHIF_SHA1=26a51ffcc1704c30fff403258a1d7392e9a991f3

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.cache/ohif}"
DIST="$DEST/dist"
STAMP="$DIST/.ainode-ohif"

say() { printf '[ohif.sh] %s\n' "$*" >&2; }
die() { printf '[ohif.sh] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "@ohif/app@$OHIF_VERSION" ] && [ -f "$DIST/index.html" ]; then
    printf '%s\n' "$DIST"
    exit 0
fi
command -v npm >/dev/null 2>&1 || die "npm not found (Debian: apt-get install nodejs npm)"

mkdir -p "$DEST"
WORK="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say "fetching @ohif/app@$OHIF_VERSION with npm pack"
(cd "$WORK" && npm pack --silent "@ohif/app@$OHIF_VERSION" </dev/null >pack.out) || die "npm pack @ohif/app@$OHIF_VERSION failed"
TARBALL="$WORK/ohif-app-$OHIF_VERSION.tgz"
[ -f "$TARBALL" ] || die "npm pack wrote no $(basename "$TARBALL")"
GOT="$(sha1sum "$TARBALL" | cut -d' ' -f1)"
[ "$GOT" = "$OHIF_SHA1" ] || die "@ohif/app@$OHIF_VERSION tarball has SHA-1 $GOT, pinned $OHIF_SHA1"
tar -xzf "$TARBALL" -C "$WORK" package/dist
[ -f "$WORK/package/dist/index.html" ] || die "@ohif/app@$OHIF_VERSION has no dist/index.html"
printf '@ohif/app@%s\n' "$OHIF_VERSION" >"$WORK/package/dist/.ainode-ohif"
rm -rf "$DIST"
mv "$WORK/package/dist" "$DIST"
say "OHIF $OHIF_VERSION in $DIST"
printf '%s\n' "$DIST"
