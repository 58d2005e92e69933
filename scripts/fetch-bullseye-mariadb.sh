#!/bin/sh
# fetch-bullseye-mariadb.sh [CACHE_DIR]
#
# Incident 001's leak (sysbench's reconnect loop leaving one CLOSE_WAIT socket
# per try) needs MariaDB Connector/C 3.1/3.2, i.e. Debian 11's libmariadb3
# (10.5); Debian 12's own libmariadb3 (Connector/C 3.3) makes the same
# sysbench crash instead. This script fetches Debian 11 (bullseye)'s
# libmariadb3 and the libssl1.1 it links against with `apt-get download`,
# through a private apt configuration (its own sources list, lists and cache
# under CACHE_DIR), and unpacks them with `dpkg-deb -x` into CACHE_DIR.
# Nothing is installed on the host and the host's apt state is not touched.
#
# Prints the directory to put in LD_LIBRARY_PATH (CACHE_DIR/lib), e.g.
#   LD_LIBRARY_PATH=$(scripts/fetch-bullseye-mariadb.sh) sysbench ...
# Idempotent: once the libraries are unpacked it only prints the directory.
#
# CACHE_DIR defaults to <repo>/build/bullseye-mariadb. The mirror is the one
# the host's own apt sources use (deb.debian.org if none is found), with the
# suite replaced by bullseye, bullseye-updates and bullseye-security.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$repo/build/bullseye-mariadb}
libdir=$cache/lib

# Already there: the two sonames sysbench will look for.
if [ -e "$libdir/libmariadb.so.3" ] && [ -e "$libdir/libssl.so.1.1" ] &&
    [ -e "$libdir/libcrypto.so.1.1" ]; then
    echo "$libdir"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "fetch-bullseye-mariadb: $tool not found (Debian/Ubuntu host needed)" >&2
        exit 1
    }
done

# The host's Debian mirrors: URIs from deb822 .sources files and one-line
# .list files. The first one whose path ends in /debian is the main archive,
# the first ending in /debian-security the security archive.
host_uris() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        # deb [opts] URI suite comp...
        sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n'
    done
}
main_uri=$(host_uris | grep -E '/debian/?$' | head -n 1 || true)
security_uri=$(host_uris | grep -E '/debian-security/?$' | head -n 1 || true)
main_uri=${main_uri:-http://deb.debian.org/debian}
security_uri=${security_uri:-http://deb.debian.org/debian-security}
main_uri=${main_uri%/}
security_uri=${security_uri%/}

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || {
    echo "fetch-bullseye-mariadb: $keyring missing (package debian-archive-keyring)" >&2
    exit 1
}

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$libdir"
cat >"$apt_dir/bullseye.list" <<EOF
deb [signed-by=$keyring] $main_uri bullseye main
deb [signed-by=$keyring] $main_uri bullseye-updates main
deb [signed-by=$keyring] $security_uri bullseye-security main
EOF

# A private apt: own sources, lists, caches and an empty dpkg status (with
# the host's status, the host's installed Debian 12 libmariadb3 would be the
# candidate and has no bullseye source); the host's sources.list.d is ignored
# (sourceparts=-).
: >"$apt_dir/status"
set -- \
    -o Dir::Etc::sourcelist="$apt_dir/bullseye.list" \
    -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$apt_dir/lists" \
    -o Dir::State::status="$apt_dir/status" \
    -o Dir::State::extended_states="$apt_dir/extended_states" \
    -o Dir::Cache="$apt_dir/cache" \
    -o Dir::Cache::pkgcache="$apt_dir/cache/pkgcache.bin" \
    -o Dir::Cache::srcpkgcache="$apt_dir/cache/srcpkgcache.bin" \
    -o APT::Architecture=amd64 \
    -o APT::Get::List-Cleanup=false \
    -o Debug::NoLocking=true \
    -o APT::Sandbox::User=root

echo "fetch-bullseye-mariadb: apt-get update (bullseye, private lists in $apt_dir)" >&2
apt-get "$@" -q update >&2

cd "$apt_dir/debs"
rm -f ./*.deb
echo "fetch-bullseye-mariadb: apt-get download libmariadb3 libssl1.1" >&2
apt-get "$@" -q download libmariadb3 libssl1.1 >&2

staging=$apt_dir/root
rm -rf "$staging"
mkdir -p "$staging"
for deb in ./*.deb; do
    echo "fetch-bullseye-mariadb: unpacking $deb" >&2
    dpkg-deb -x "$deb" "$staging"
done

# libmariadb.so.3 lives in /usr/lib/x86_64-linux-gnu, libssl/libcrypto 1.1 in
# the same place; the plugins directory (auth plugins) beside it. Copy the
# shared objects (following the soname symlinks) into one flat directory.
find "$staging" \( -name 'libmariadb.so.3' -o -name 'libssl.so.1.1' -o -name 'libcrypto.so.1.1' \) \
    -exec cp -L {} "$libdir/" \;
plugins=$(find "$staging" -type d -path '*/libmariadb3/plugin' | head -n 1)
if [ -n "$plugins" ]; then
    rm -rf "$libdir/plugin"
    cp -a "$plugins" "$libdir/plugin"
fi
ls "$apt_dir/debs" >"$cache/PACKAGES"

if [ ! -e "$libdir/libmariadb.so.3" ] || [ ! -e "$libdir/libssl.so.1.1" ] ||
    [ ! -e "$libdir/libcrypto.so.1.1" ]; then
    echo "fetch-bullseye-mariadb: libmariadb.so.3, libssl.so.1.1 or libcrypto.so.1.1" \
        "is missing in $libdir after unpacking $(cat "$cache/PACKAGES")" >&2
    exit 1
fi
echo "$libdir"
