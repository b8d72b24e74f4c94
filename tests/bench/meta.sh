#!/bin/bash
# lib/meta: load and check 16,384 snapshots from a bulk file and from a
# per-file directory; time and peak RSS. The anchor is libvirt itself
# (embedded QEMU driver, 9.0): a fresh `virsh snapshot-list` loads and
# parses every per-file snapshot file at driver start, as libvirtd does at
# boot. libvirt cannot read the bulk layout, so those rows have no anchor.
# Prints markdown rows for doc/PERFORMANCE.md.
set -euo pipefail
d=$(dirname "$0")
. "$d/common.sh"
. "$d/../meta-lib.sh"
N=${META_N:-16384}
B=$BENCH_DIR/meta
rm -rf "$B"; mkdir -p "$B"

# measure runs programs (not functions) under /usr/bin/time
qk () { echo qcowkit meta check --no-images --libvirt-root "$1" d; }
vs () { echo timeout 600 virsh -q -c "qemu:///embed?root=$1" snapshot-list d --name; }
setup_virsh () {
  mkdir -p "$1/etc"
  printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' > "$1/etc/qemu.conf"
  $(vs "$1") > /dev/null 2>&1 || true   # probe QEMU's capabilities once
}
size () { du -sm "$1/lib/qemu/snapshot" | awk '{print $1}'; }

echo "| $N snapshots | qcowkit meta check | RSS | libvirt 9.0 (virsh snapshot-list) | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for pad in 0 100; do
  R=$B/pf-$pad; meta_gen "$R" d "$N" per-file chain "$pad"
  setup_virsh "$R"
  read -r t r < <(measure $(qk "$R"))
  if command -v virsh > /dev/null; then
    n=$($(vs "$R") 2>/dev/null | grep -c . || true)
    [ "$n" = "$N" ] || echo "libvirt loaded $n of $N snapshots" >&2
    read -r vt vr < <(measure $(vs "$R"))
  else
    vt=0 vr=0
  fi
  row "per-file, $(size "$R") MiB ($pad filler lines per domain)" "$t" "$r" "$vt" "$vr"
  rm -rf "$R"
done
for pad in 0 100 300; do
  R=$B/bulk-$pad; meta_gen "$R" d "$N" bulk chain "$pad"
  read -r t r < <(measure $(qk "$R"))
  printf '| bulk file, %s MiB (%s filler lines per domain) | %s s | %s MiB | - | - | - |\n' \
    "$(size "$R")" "$pad" "$t" "$(awk -v k="$r" 'BEGIN{printf "%.1f", k/1024}')"
  rm -rf "$R"
done
# conversion, both ways (every file fsynced)
R=$B/conv; meta_gen "$R" d "$N" per-file chain 0
t0=$EPOCHREALTIME
qcowkit meta convert --libvirt-root "$R" --to bulk --no-backup d > /dev/null
t1=$EPOCHREALTIME
qcowkit meta convert --libvirt-root "$R" --to per-file --no-backup d > /dev/null
t2=$EPOCHREALTIME
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$N" 'BEGIN {
  printf "| convert %d snapshots per-file -> bulk | %.3f s | | | | |\n", n, b - a
  printf "| convert %d snapshots bulk -> per-file | %.3f s | | | | |\n", n, c - b }'
rm -rf "$B"
