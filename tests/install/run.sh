#!/usr/bin/env bash
# Install test: `make install` into a temp DESTDIR with PREFIX=/usr, check the
# installed files, the SONAME and the exported symbols, then build every
# example OUTSIDE the tree with nothing but `pkg-config --cflags --libs
# libstock` (shared) and `pkg-config --static` (static), and run them.
set -euo pipefail
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest="$tmp/root"
work="$tmp/outside"
mkdir -p "$work"
pass=0
fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }

make -s install DESTDIR="$dest" PREFIX=/usr >/dev/null
lib="$dest/usr/lib"
version=$(sed -n 's/^Version: //p' "$lib/pkgconfig/libstock.pc")
major=${version%%.*}
# Before 1.0 the SONAME carries the minor version too (every 0.x may change the ABI).
[ "$major" = 0 ] && { minor=${version#*.}; major=0.${minor%%.*}; }

for f in "$lib/libstock.so.$version" "$lib/libstock.a" "$dest/usr/include/stock.h" \
         "$dest/usr/include/stock/counter.h" "$lib/pkgconfig/libstock.pc"; do
    [ -f "$f" ] && ok "installed ${f#$dest}" || bad "missing ${f#$dest}"
done
[ "$(readlink "$lib/libstock.so.$major")" = "libstock.so.$version" ] && ok "libstock.so.$major -> libstock.so.$version" || bad "SONAME symlink"
[ "$(readlink "$lib/libstock.so")" = "libstock.so.$major" ] && ok "libstock.so -> libstock.so.$major" || bad "dev symlink"
soname=$(readelf -d "$lib/libstock.so.$version" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libstock.so.$major" ] && ok "SONAME $soname" || bad "SONAME is '$soname'"

# Only the public API is exported: every dynamic symbol is stock_<something>.
exported=$(nm -D --defined-only "$lib/libstock.so.$version" | awk '{print $3}')
leaked=$(printf '%s\n' "$exported" | grep -v -E '^stock_[a-z]' || true)
internal=$(printf '%s\n' "$exported" | grep -E '^stock__' || true)
if [ -z "$leaked$internal" ]; then
    ok "exports only stock_* ($(printf '%s\n' "$exported" | wc -l) symbols)"
else
    bad "non-API symbols exported: $leaked $internal"
fi

export PKG_CONFIG_SYSROOT_DIR="$dest"
export PKG_CONFIG_PATH="$lib/pkgconfig"
cflags_libs=$(pkg-config --cflags --libs libstock)
static_libs=$(pkg-config --static --cflags --libs libstock)
echo "     pkg-config --cflags --libs libstock          : $cflags_libs"
echo "     pkg-config --static --cflags --libs libstock : $static_libs"

for src in examples/*.c; do
    name=$(basename "$src" .c)
    cp "$src" "$work/$name.c"
    if (cd "$work" && cc -std=gnu11 -Wall -Werror -o "$name" "$name.c" $cflags_libs); then
        if (cd "$work" && LD_LIBRARY_PATH="$lib" timeout 30 "./$name" >"$name.out" 2>&1); then
            ok "example $name (shared) builds and runs"
        else
            bad "example $name (shared) failed:"; cat "$work/$name.out"
        fi
        # It really is the installed shared library that got loaded.
        # (captured first: grep -q closing the pipe early would fail pipefail)
        loaded=$(LD_LIBRARY_PATH="$lib" ldd "$work/$name")
        case "$loaded" in
        *"$lib/libstock.so.$major"*) ;;
        *) bad "example $name did not load the installed libstock.so" ;;
        esac
    else
        bad "example $name (shared) does not compile"
    fi
    if (cd "$work" && cc -std=gnu11 -Wall -Werror -static -o "$name-static" "$name.c" $static_libs); then
        if (cd "$work" && timeout 30 "./$name-static" >"$name-static.out" 2>&1); then
            ok "example $name (static) builds and runs"
        else
            bad "example $name (static) failed:"; cat "$work/$name-static.out"
        fi
    else
        bad "example $name (static) does not link"
    fi
done

# uninstall removes everything it installed.
make -s uninstall DESTDIR="$dest" PREFIX=/usr >/dev/null
left=$(find "$dest" -type f -o -type l | grep -E 'stock' || true)
[ -z "$left" ] && ok "uninstall removed every file" || bad "uninstall left: $left"

echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
