#!/bin/bash
# qcowkit info on a 1 TiB preallocation=metadata image must not read L2
# tables: count the bytes it reads (strace) and time it next to qemu-img.
set -euo pipefail
. "$(dirname "$0")/common.sh"
img=$BENCH_DIR/prealloc-1t.qcow2
[ -f "$img" ] || qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 1T
l2_bytes=$(( (1 << 40) / 65536 * 8 ))
read -r qs qr < <(measure qcowkit info --output=json "$img")
read -r as ar < <(measure qemu-img info --output=json "$img")
bytes=$(strace -f -e trace=pread64,read -e signal=none qcowkit info --output=json "$img" 2>&1 >/dev/null \
        | awk -F'= ' '/pread64|read\(/ && $NF ~ /^[0-9]+/ {s += $NF} END {print s+0}')
echo "| info, 1 TiB preallocation=metadata ($(du -h "$img" | cut -f1) on disk, $((l2_bytes >> 20)) MiB of L2 tables) | qcowkit | qemu-img | ratio |"
row "info --output=json" "$qs" "$qr" "$as" "$ar"
echo "qcowkit info read $bytes bytes in all (L2 tables: $l2_bytes bytes): $([ "$bytes" -lt $((l2_bytes / 100)) ] && echo 'no L2 table read' || echo 'L2 TABLES READ')"
