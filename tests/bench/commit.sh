#!/bin/bash
# qcowkit commit against qemu-img commit, same run, same chains, the
# tools interleaved run by run; every run commits fresh copies of the
# base and the overlay (the copies are not timed; both are synced before
# the timed run). Rows:
# - a 4 GiB base holding 2 GiB, and a 4 GiB overlay with 1.5 GiB written
#   by qemu-io in random 64 KiB writes (24,576 clusters in random host
#   order), committed and the overlay emptied;
# - the same with the base holding an internal snapshot (every L2 table
#   and data cluster the commit touches is shared: copied, not written);
# - the same overlay over a raw base.
# The floor: cp of the overlay (what reading and writing its data costs).
# Afterwards both tools' bases must check clean and hold the same guest
# data (qemu-img compare), and both overlays read the same.
set -euo pipefail
. "$(dirname "$0")/common.sh"

fill2g () {  # fill2g FMT IMG: 2 GiB of data (qemu-io writes at most 1 GiB at once)
  local a=() i
  for i in 0 1 2 3 4 5 6 7; do a+=(-c "write -P $((i + 1)) $((i * 256))M 256M"); done
  qemu-io -f "$1" "${a[@]}" "$2" > /dev/null
}

make_chain () {  # make_chain NAME DIR
  [ -f "$2/top.qcow2" ] && return
  mkdir -p "$2.tmp"
  case $1 in
    raw)
      qemu-img create -q -f raw "$2.tmp/base.raw" 4G
      fill2g raw "$2.tmp/base.raw"
      qemu-img create -q -f qcow2 -b base.raw -F raw "$2.tmp/top.qcow2" 4G ;;
    *)
      qemu-img create -q -f qcow2 "$2.tmp/base.qcow2" 4G
      fill2g qcow2 "$2.tmp/base.qcow2"
      [ "$1" = snap ] && qemu-img snapshot -c s1 "$2.tmp/base.qcow2"
      qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$2.tmp/top.qcow2" 4G ;;
  esac
  randwrites "$2.tmp/top.qcow2" 24576 65536 65536 65536 11
  rm -rf "$2"
  mv "$2.tmp" "$2"
}

describe () {
  case $1 in
    plain) echo "4 GiB overlay, 1.5 GiB in random 64 KiB writes, into a 4 GiB qcow2 base (2 GiB data)" ;;
    snap) echo "the same, the base with an internal snapshot (shared tables and clusters copied)" ;;
    raw) echo "the same overlay into a 4 GiB raw base" ;;
  esac
}

qk=$BENCH_DIR/qcowkit-bench
cp "$(command -v qcowkit)" "$qk"
k=$BENCH_DIR/commit-k q=$BENCH_DIR/commit-q
echo "| chain | qcowkit commit | RSS | qemu-img commit | RSS | ratio | cp of the overlay (floor) |"
echo "|---|---|---|---|---|---|---|"
for r in ${BENCH_ONLY:-plain snap raw}; do
  src=$BENCH_DIR/commit-$r
  make_chain "$r" "$src"
  qbest= qrss= kbest= krss= cbest=
  for _ in $(seq "$RUNS"); do
    rm -rf "$k" "$q"
    cp -a --sparse=always "$src" "$k"
    cp -a --sparse=always "$src" "$q"
    sync
    out=$(timed cp --sparse=always "$src/top.qcow2" "$BENCH_DIR/commit-floor.qcow2")
    read -r t _ <<< "$out"
    if [ -z "$cbest" ] || awk "BEGIN{exit !($t < $cbest)}"; then cbest=$t; fi
    rm -f "$BENCH_DIR/commit-floor.qcow2"
    sync
    out=$(cd "$k" && timed "$qk" commit top.qcow2); read -r t m <<< "$out"
    if [ -z "$kbest" ] || awk "BEGIN{exit !($t < $kbest)}"; then kbest=$t krss=$m; fi
    out=$(cd "$q" && timed qemu-img commit top.qcow2); read -r t m <<< "$out"
    if [ -z "$qbest" ] || awk "BEGIN{exit !($t < $qbest)}"; then qbest=$t qrss=$m; fi
  done
  if [ "$r" != raw ]; then
    qemu-img check "$k/base.qcow2" > /dev/null 2>&1 ||
      { echo "qcowkit's base of $r does not check clean" >&2; exit 1; }
    qemu-img compare -q "$k/base.qcow2" "$q/base.qcow2" ||
      { echo "the two bases of $r differ" >&2; exit 1; }
  else
    cmp -s "$k/base.raw" "$q/base.raw" ||
      { echo "the two raw bases differ" >&2; exit 1; }
  fi
  qemu-img compare -q "$k/top.qcow2" "$q/top.qcow2" ||
    { echo "the two overlays of $r read differently" >&2; exit 1; }
  row "$(describe "$r")" "$kbest" "$krss" "$qbest" "$qrss" | sed "s/\$/ $cbest s |/"
done
rm -rf "$k" "$q"
