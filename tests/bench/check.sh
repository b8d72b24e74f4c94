#!/bin/bash
# qcowkit check against qemu-img check, same run, same files:
# 1 TiB preallocation=metadata with no snapshots and with 4 internal
# snapshots (every L2 table shared by 5 L1 tables), the same where the
# active image then wrote one cluster in every L2 table's range (so every
# table exists twice, the snapshots' and the active one), and 64 GiB with
# 4 KiB clusters.
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
pd=$BENCH_DIR/prealloc-1t-4snap-diverged.qcow2
if [ ! -f "$pd" ]; then
  cp --sparse=always "$p4" "$pd.tmp"
  # one 64 KiB write per 512 MiB (the range of one L2 table)
  args=()
  for i in $(seq 0 2047); do args+=(-c "write -P 7 $((i * 536870912)) 64k"); done
  qemu-io -f qcow2 "${args[@]}" "$pd.tmp" >/dev/null
  mv "$pd.tmp" "$pd"
fi
[ -f "$s4k" ] || qemu-img create -q -f qcow2 -o cluster_size=4096,preallocation=metadata "$s4k" 64G
echo "| check | qcowkit | RSS | qemu-img | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for img in "$p0" "$p4" "$pd" "$s4k"; do
  read -r qs qr < <(measure qcowkit check "$img")
  read -r as ar < <(measure qemu-img check "$img")
  q=$(qcowkit check --output=json "$img" | jq -c '{c:.corruptions,l:.leaks,e:."image-end-offset",a:."allocated-clusters"}')
  a=$(qemu-img check --output=json "$img" | jq -c '{c:.corruptions,l:.leaks,e:."image-end-offset",a:."allocated-clusters"}')
  [ "$q" = "$a" ] || echo "RESULTS DIFFER on $img: $q vs $a" >&2
  row "$(basename "$img") ($(du -h "$img" | cut -f1) on disk)" "$qs" "$qr" "$as" "$ar"
done
