#!/usr/bin/env bash
# Installs FerretDB v1.24.2 (the MongoDB-compatible server the tests start
# when neither STOCK_TEST_MONGO_URI nor mongod is available) into
# $FERRETDB_BIN (default: $(go env GOPATH)/bin/ferretdb). Needs Go.
#
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` alone does
# not give a working binary here: the module proxy refuses the version list
# that `go install` reads for deprecation notices (403), and a binary built
# from the module cache panics at start because build/version/version.txt is
# empty in the module zip. So: fetch the module with `go mod download`, copy
# it, write version.txt, build ./cmd/ferretdb inside it.
set -euo pipefail
VERSION=v1.24.2
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "ferretdb-install: Go is not installed" >&2; exit 1; }
BIN=${FERRETDB_BIN:-$(go env GOPATH)/bin/ferretdb}
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep "version: $VERSION" >/dev/null; then
	exit 0
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
go mod init ferretdb-build >/dev/null 2>&1
dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] && [ -d "$dir" ] || { echo "ferretdb-install: module download failed" >&2; exit 1; }
cp -r "$dir" src
chmod -R u+w src
echo "$VERSION" > src/build/version/version.txt
mkdir -p "$(dirname "$BIN")"
(cd src && go build -o "$BIN" ./cmd/ferretdb)
"$BIN" --version | sed -n 1p
