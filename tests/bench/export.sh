#!/bin/bash
# qcowkit export against qemu-img convert -O raw on a 2 GiB image with
# uncompressible data, compressed clusters and zero clusters.
set -euo pipefail
. "$(dirname "$0")/common.sh"
img=$BENCH_DIR/mixed-2g.qcow2
if [ ! -f "$img" ]; then
  src=$BENCH_DIR/mixed-2g.src
  truncate -s 2G "$src"
  # 640 MiB incompressible, 640 MiB compressible text, the rest zero
  head -c 640M /dev/urandom | dd of="$src" conv=notrunc bs=1M status=none
  ( set +o pipefail
    yes 'qcowkit compressible guest data line with some variety 0123456789' \
      | head -c 640M | dd of="$src" bs=1M seek=640 conv=notrunc status=none )
  # compress: random clusters stay uncompressed, text becomes compressed
  qemu-img convert -q -c -O qcow2 "$src" "$img"
  # and some zero clusters written over data
  qemu-io -f qcow2 -c 'write -z 100M 64M' -c 'write -z 900M 64M' "$img" >/dev/null
  rm -f "$src"
fi
out=$BENCH_DIR/export.raw
# Each run starts from the same state: no output file, nothing dirty, and
# (when allowed) a cold page cache for the image.
fresh () {
  rm -f "$out"
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
}
export -f fresh 2>/dev/null || true
qk_run () { fresh; qcowkit export -q "$img" "$out"; }
qi_run () { fresh; qemu-img convert -O raw "$img" "$out"; }
qis_run () { fresh; qemu-img convert -O raw "$img" "$out" && sync; }
read -r qs qr < <(measure bash -c "$(declare -f fresh qk_run); img='$img' out='$out'; qk_run")
cp --sparse=always "$out" "$out.qk"
read -r as ar < <(measure bash -c "$(declare -f fresh qi_run); img='$img' out='$out'; qi_run")
cmp "$out" "$out.qk" >/dev/null && same=identical || same=DIFFERENT
read -r ss sr < <(measure bash -c "$(declare -f fresh qis_run); img='$img' out='$out'; qis_run")
rm -f "$out" "$out.qk"
echo "| export, 2 GiB: $(qemu-img info --output=json "$img" | jq -r '."actual-size"' | awk '{printf "%.0f MiB", $1/1048576}') on disk, compressed + data + zero | qcowkit | RSS | qemu-img | RSS | ratio |"
echo "|---|---|---|---|---|---|"
row "export (fsyncs) / convert -O raw (no flush)" "$qs" "$qr" "$as" "$ar"
row "export (fsyncs) / convert -O raw; sync" "$qs" "$qr" "$ss" "$sr"
echo "outputs: $same; times include dropping caches and syncing before each run"
