#!/bin/sh
# arrowport @VERSION@ (build @ID@): one self-contained file for Linux x86_64.
#
# This file is a small POSIX sh launcher followed by a gzip'd tar of a PyInstaller
# "onedir" build of Arrowport: its own Python, pyarrow, DuckDB with the ducklake,
# postgres, httpfs and aws extensions, deltalake and OpenSSL. Nothing is needed on the
# machine but sh, tail, tar and gzip. The first run of a build unpacks it once into
# $ARROWPORT_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/arrowport/@ID@); later
# runs start from there at once. Built by packaging/build-binary; see docs/binary.md.
set -e
cache=${ARROWPORT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-}/.cache}/arrowport}
case $cache in
/.cache/arrowport)
    echo "arrowport: set HOME, XDG_CACHE_HOME or ARROWPORT_CACHE_DIR (where to unpack once)" >&2
    exit 2 ;;
esac
dir=$cache/@ID@
if [ ! -f "$dir/arrowport" ] || [ ! -x "$dir/arrowport" ]; then
    echo "arrowport: first run of build @ID@: unpacking into $dir" >&2
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.unpack-@ID@.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if ! tail -c +@OFFSET@ "$0" | tar -xzf - -C "$tmp"; then
        echo "arrowport: $0 is damaged (unpacking failed): copy or build it again" >&2
        exit 1
    fi
    # A directory renamed into place is complete; a process that lost a race to unpack
    # the same build finds the winner's copy there (mv onto it fails), and drops its own.
    mv "$tmp/arrowport" "$dir" 2>/dev/null || [ -f "$dir/arrowport" ]
    rm -rf "$tmp"
    trap - EXIT HUP INT TERM
fi
exec "$dir/arrowport" "$@"
