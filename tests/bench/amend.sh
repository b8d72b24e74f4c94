#!/bin/bash
# qcowkit amend against qemu-img amend, same run, same images, the tools
# interleaved run by run; every run amends a fresh copy (the copy is not
# timed). Rows:
# - 1 TiB preallocation=metadata with 4 internal snapshots, version 3 to
#   0.10 (every L2 entry is a preallocated zero cluster: 16,777,216
#   clusters written with zeros, or, as both tools do, left as the holes
#   they are) and back to 1.1;
# - the same image, refcount width 16 to 64 bits (a new refcount
#   structure for 16,777,216+ clusters);
# - 20 GiB with 8 GiB in random 64 KiB writes and 2 GiB of them zeroed
#   again (32,768 zero clusters), with a raw backing file: 0.10 (each zero
#   cluster becomes a newly allocated cluster of zeros).
# Afterwards each tool's result must check clean with qemu-img check, and
# the two results must hold the same guest data (qemu-img compare).
set -euo pipefail
. "$(dirname "$0")/common.sh"

make_image () {  # make_image NAME FILE
  [ -f "$2" ] && return
  case $1 in
    down1t4s|rc64_1t4s)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 1T
      for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$2.tmp"; done ;;
    up1t4s)
      qemu-img create -q -f qcow2 -o preallocation=metadata,compat=0.10 \
        "$2.tmp" 1T
      for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$2.tmp"; done ;;
    downfrag)
      [ -f "$BENCH_DIR/amend-base.raw" ] ||
        qemu-img create -q -f raw "$BENCH_DIR/amend-base.raw" 20G
      qemu-img create -q -f qcow2 -b "$BENCH_DIR/amend-base.raw" -F raw \
        "$2.tmp" 20G
      randwrites "$2.tmp" 131072 327680 65536 65536 3
      shuf -i 0-327679 -n 32768 \
           --random-source=<(openssl enc -aes-128-ctr -pass pass:4 -nosalt \
                               </dev/zero 2>/dev/null) |
        awk '{ printf "write -z %.0f 65536\n", $1 * 65536 }' |
        qemu-io -f qcow2 "$2.tmp" > /dev/null ;;
  esac
  mv "$2.tmp" "$2"
}

describe () {
  case $1 in
    down1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: compat 1.1 to 0.10" ;;
    up1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: compat 0.10 to 1.1" ;;
    rc64_1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: refcount bits 16 to 64" ;;
    downfrag) echo "20 GiB, 8 GiB random 64 KiB writes, 32,768 zeroed, raw backing: compat 1.1 to 0.10" ;;
  esac
}
opts () {
  case $1 in
    down1t4s|downfrag) echo "compat=0.10" ;;
    up1t4s) echo "compat=1.1" ;;
    rc64_1t4s) echo "refcount_bits=64" ;;
  esac
}


# a copy of the binary: a rebuild during the run cannot change it
qk=$BENCH_DIR/qcowkit-bench
cp "$top_builddir/tools/qcowkit" "$qk"
kw=$BENCH_DIR/amend-k.qcow2
qw=$BENCH_DIR/amend-q.qcow2
echo "| image | qcowkit amend | RSS | qemu-img amend | RSS | ratio | cp of the image (floor) |"
echo "|---|---|---|---|---|---|---|"
for r in ${BENCH_ONLY:-up1t4s down1t4s rc64_1t4s downfrag}; do
  img=$BENCH_DIR/amend-$r.qcow2
  make_image "$r" "$img"
  o=$(opts "$r")
  kopt=$(echo "$o" | sed 's/compat=/--compat=/; s/refcount_bits=/--refcount-bits=/')
  qbest= qrss= kbest= krss= cbest=
  for _ in $(seq "$RUNS"); do
    out=$(timed cp --sparse=always "$img" "$kw"); read -r t _ <<< "$out"
    if [ -z "$cbest" ] || awk "BEGIN{exit !($t < $cbest)}"; then cbest=$t; fi
    sync
    out=$(timed "$qk" amend "$kopt" "$kw"); read -r t m <<< "$out"
    if [ -z "$kbest" ] || awk "BEGIN{exit !($t < $kbest)}"; then kbest=$t krss=$m; fi
    cp --sparse=always "$img" "$qw"
    sync
    out=$(timed qemu-img amend -o "$o" "$qw"); read -r t m <<< "$out"
    if [ -z "$qbest" ] || awk "BEGIN{exit !($t < $qbest)}"; then qbest=$t qrss=$m; fi
  done
  qemu-img check "$kw" >/dev/null 2>&1 ||
    { echo "qcowkit's amend of $r does not check clean" >&2; exit 1; }
  qemu-img check "$qw" >/dev/null 2>&1 ||
    { echo "qemu-img's amend of $r does not check clean" >&2; exit 1; }
  qemu-img compare -q "$kw" "$qw" ||
    { echo "the two amends of $r differ in guest data" >&2; exit 1; }
  row "$(describe "$r")" "$kbest" "$krss" "$qbest" "$qrss" | sed "s/\$/ $cbest s |/"
done
rm -f "$kw" "$qw"
