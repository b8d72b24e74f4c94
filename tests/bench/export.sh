#!/bin/bash
# qcowkit export against qemu-img convert -O raw, each 1 GiB of guest data:
# random (incompressible, plain data clusters), and text compressed with
# zlib and with zstd (about 38% of its size). Two semantics, the same on
# both sides of a row:
#   not flushed: export --no-flush        / convert -O raw
#   flushed:     export (fsyncs, default) / convert -O raw; sync OUTPUT
# (sync with a file name fsyncs that file only). Runs are interleaved, the
# order swapped every run, best of $RUNS each. Every run starts with no
# output file and nothing dirty; the image is in the page cache (warm),
# and, where /proc/sys/vm/drop_caches can be written, a second set of rows
# starts each run with the caches dropped (cold). The outputs are compared
# (cmp) in the same run.
# BENCH_ONLY="random zstd" limits the images.
set -euo pipefail
. "$(dirname "$0")/common.sh"

image () {  # image KIND: the 1 GiB image, made once
  local img=$BENCH_DIR/export-$1-1g.qcow2 src=$BENCH_DIR/export-1g.src
  if [ ! -f "$img" ]; then
    # deterministic data: an AES-CTR keystream, or its bytes as decimal
    # text (od), which zlib and zstd bring to about 38%
    ( set +o pipefail
      if [ "$1" = random ]; then
        openssl enc -aes-128-ctr -pass pass:14 -nosalt </dev/zero 2>/dev/null |
          head -c 1G > "$src"
      else
        openssl enc -aes-128-ctr -pass pass:15 -nosalt </dev/zero 2>/dev/null |
          head -c 300M | od -An -tu1 -v | head -c 1G > "$src"
      fi )
    if [ "$1" = random ]; then
      qemu-img convert -q -O qcow2 "$src" "$img.tmp"
    else
      qemu-img convert -q -c -o compression_type="$1" -O qcow2 "$src" "$img.tmp"
    fi
    rm -f "$src"
    mv "$img.tmp" "$img"
  fi
  echo "$img"
}

out=$BENCH_DIR/export.raw
cold=false
if { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then cold=true; fi

# fresh IMG CACHE: no output, nothing dirty, the image warm or cold
fresh () {
  rm -f "$out"
  sync
  if [ "$2" = cold ]; then
    echo 3 > /proc/sys/vm/drop_caches
  else
    cat "$1" > /dev/null
  fi
}

# once CMD...: "seconds peak_rss_kib" of one run
once () {
  local t0 t1
  t0=$EPOCHREALTIME
  /usr/bin/time -f '%M' -o "$BENCH_DIR/.time" "$@" >/dev/null 2>"$BENCH_DIR/.err" || {
    echo "benchmark command failed: $*" >&2; cat "$BENCH_DIR/.err" >&2; return 1; }
  t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}') $(cat "$BENCH_DIR/.time")"
}

# pair IMG CACHE MODE: one row, qcowkit and qemu-img interleaved
pair () {
  local img=$1 cache=$2 mode=$3 qk qi i t r qs= qr= as= ar=
  if [ "$mode" = flushed ]; then
    qk=(qcowkit export -q "$img" "$out")
    qi=(sh -c 'qemu-img convert -O raw "$1" "$2" && sync "$2"' sh "$img" "$out")
  else
    qk=(qcowkit export -q --no-flush "$img" "$out")
    qi=(qemu-img convert -O raw "$img" "$out")
  fi
  for i in $(seq "$RUNS"); do
    for who in $( ((i % 2)) && echo "qk qi" || echo "qi qk"); do
      fresh "$img" "$cache"
      if [ "$who" = qk ]; then
        read -r t r < <(once "${qk[@]}")
        if [ -z "$qs" ] || awk "BEGIN{exit !($t < $qs)}"; then qs=$t; qr=$r; fi
      else
        read -r t r < <(once "${qi[@]}")
        if [ -z "$as" ] || awk "BEGIN{exit !($t < $as)}"; then as=$t; ar=$r; fi
      fi
    done
  done
  if [ "$mode" = flushed ]; then
    row "$cache, flushed: export / \`convert -O raw; sync OUT\`" "$qs" "$qr" "$as" "$ar"
  else
    row "$cache, not flushed: export --no-flush / \`convert -O raw\`" "$qs" "$qr" "$as" "$ar"
  fi
}

caches=warm
$cold && caches="warm cold"
for kind in ${BENCH_ONLY:-random zlib zstd}; do
  img=$(image "$kind")
  # the outputs, compared once
  rm -f "$out" "$out.qk"
  qcowkit export -q --no-flush "$img" "$out.qk"
  qemu-img convert -O raw "$img" "$out"
  cmp -s "$out" "$out.qk" && same=identical || same=DIFFERENT
  rm -f "$out" "$out.qk"
  case $kind in
    random) what="random data" ;;
    *) what="text compressed with $kind" ;;
  esac
  echo
  echo "| export, 1 GiB of $what ($(du -m "$img" | cut -f1) MiB on disk) | qcowkit | RSS | qemu-img | RSS | ratio |"
  echo "|---|---|---|---|---|---|"
  for cache in $caches; do
    for mode in "not flushed" flushed; do
      pair "$img" "$cache" "$mode"
    done
  done
  echo "outputs: $same"
done
rm -f "$out"
$cold || echo "cold cache not measured: /proc/sys/vm/drop_caches cannot be written here"
