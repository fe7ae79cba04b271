#!/usr/bin/env bash
# Records the C program hotset.c (tunable hot set): TOTAL MiB of text-like pages, RATE page
# rewrites per second, HOT_SHARE of them inside the first HOT MiB.
#
#   bash samples/record/hotset.sh [TOTAL_MIB=256] [HOT_MIB=16] [RATE=20000] [HOT_SHARE=0.9]
source "$(dirname "$0")/common.sh"
bindir=$(mktemp -d "${TMPDIR:-/tmp}/hotset.XXXXXX")
gcc -O2 -o "$bindir/hotset" samples/record/hotset.c
record_program hotset-${1:-256}m-${2:-16}m -- "$bindir/hotset" "${1:-256}" "${2:-16}" "${3:-20000}" "${4:-0.9}"
rm -rf "$bindir"
