#!/bin/bash
# qcowkit check against qemu-img check, same run, same files:
# 1 TiB preallocation=metadata with no snapshots and with 4 internal
# snapshots (every L2 table shared by 5 L1 tables), and 64 GiB with 4 KiB
# clusters.
set -euo pipefail
. "$(dirname "$0")/common.sh"
p0=$BENCH_DIR/prealloc-1t.qcow2
p4=$BENCH_DIR/prealloc-1t-4snap.qcow2
s4k=$BENCH_DIR/c4k-64g.qcow2
[ -f "$p0" ] || qemu-img create -q -f qcow2 -o preallocation=metadata "$p0" 1T
if [ ! -f "$p4" ]; then
  qemu-img create -q -f qcow2 -o preallocation=metadata "$p4.tmp" 1T
  for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$p4.tmp"; done
  mv "$p4.tmp" "$p4"
fi
[ -f "$s4k" ] || qemu-img create -q -f qcow2 -o cluster_size=4096,preallocation=metadata "$s4k" 64G
echo "| check | qcowkit | RSS | qemu-img | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for img in "$p0" "$p4" "$s4k"; do
  read -r qs qr < <(measure qcowkit check "$img")
  read -r as ar < <(measure qemu-img check "$img")
  q=$(qcowkit check --output=json "$img" | jq -c '{c:.corruptions,l:.leaks,e:."image-end-offset",a:."allocated-clusters"}')
  a=$(qemu-img check --output=json "$img" | jq -c '{c:.corruptions,l:.leaks,e:."image-end-offset",a:."allocated-clusters"}')
  [ "$q" = "$a" ] || echo "RESULTS DIFFER on $img: $q vs $a" >&2
  row "$(basename "$img") ($(du -h "$img" | cut -f1) on disk)" "$qs" "$qr" "$as" "$ar"
done
