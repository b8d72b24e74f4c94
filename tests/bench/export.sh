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
read -r qs qr < <(measure qcowkit export -q "$img" "$out")
cp "$out" "$out.qk"
read -r as ar < <(measure qemu-img convert -O raw "$img" "$out")
cmp "$out" "$out.qk" >/dev/null && same=identical || same=DIFFERENT
rm -f "$out" "$out.qk"
echo "| export, 2 GiB: $(qemu-img info --output=json "$img" | jq -r '."actual-size"' | awk '{printf "%.0f MiB", $1/1048576}') on disk, compressed + data + zero | qcowkit | qemu-img | ratio |"
row "export / convert -O raw" "$qs" "$qr" "$as" "$ar"
echo "outputs: $same"
