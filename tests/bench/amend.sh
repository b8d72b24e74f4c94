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
# - 20 GiB with 2 GiB in random 64 KiB writes and 512 MiB zeroed (8,192
#   zero clusters), with a raw backing file: 0.10 (each zero cluster
#   becomes a newly allocated cluster of zeros; until 2026-12-03 8 GiB and
#   32,768, which took the whole bench past 10 minutes);
# - "realistic": 8 GiB with 2 GiB in random 64 KiB writes (host order is
#   write order), 4,096 of them zeroed again (write -z: preallocated zero
#   clusters), a snapshot, 256 MiB more, a snapshot, 256 MiB more
#   (2.5 GiB on disk): 0.10, refcount bits 16 to 64, and the same writes
#   into a version 2 image, to 1.1.
# Afterwards qcowkit's result must check clean with qemu-img check, and
# the two results must hold the same guest data (qemu-img compare).
# qemu-img's result must check clean too, or the errors qemu-img check
# finds in it are printed under the table (and the row marked).
set -euo pipefail
. "$(dirname "$0")/common.sh"

real8g () {  # real8g FILE COMPAT: the realistic image
  qemu-img create -q -f qcow2 -o compat="$2" "$1" 8G
  randwrites "$1" 32768 131072 65536 65536 5
  # zeroed again: the first 4,096 slots of those writes
  shuf -i 0-131071 -n 32768 \
       --random-source=<(openssl enc -aes-128-ctr -pass pass:5 -nosalt \
                           </dev/zero 2>/dev/null) |
    awk 'NR <= 4096 { printf "write -z %.0f 65536\n", $1 * 65536 }' |
    qemu-io -f qcow2 "$1" > /dev/null
  qemu-img snapshot -c s1 "$1"
  randwrites "$1" 4096 131072 65536 65536 7
  qemu-img snapshot -c s2 "$1"
  randwrites "$1" 4096 131072 65536 65536 8
}

make_image () {  # make_image NAME FILE
  [ -f "$2" ] && return
  case $1 in
    down1t4s)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 1T
      for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$2.tmp"; done ;;
    up1t4s)
      qemu-img create -q -f qcow2 -o preallocation=metadata,compat=0.10 \
        "$2.tmp" 1T
      for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$2.tmp"; done ;;
    real8g_down) real8g "$2.tmp" 1.1 ;;
    # (made by qemu-io as version 2, not by qemu-img amend: qemu-img 7.2's
    # downgrade of real8g_down sets COPIED on clusters with refcount 3)
    real8g_up) real8g "$2.tmp" 0.10 ;;
    downfrag2)
      [ -f "$BENCH_DIR/amend-base.raw" ] ||
        qemu-img create -q -f raw "$BENCH_DIR/amend-base.raw" 20G
      qemu-img create -q -f qcow2 -b "$BENCH_DIR/amend-base.raw" -F raw \
        "$2.tmp" 20G
      randwrites "$2.tmp" 32768 327680 65536 65536 3
      shuf -i 0-327679 -n 8192 \
           --random-source=<(openssl enc -aes-128-ctr -pass pass:4 -nosalt \
                               </dev/zero 2>/dev/null) |
        awk '{ printf "write -z %.0f 65536\n", $1 * 65536 }' |
        qemu-io -f qcow2 "$2.tmp" > /dev/null ;;
  esac
  mv "$2.tmp" "$2"
}

# the image a row amends (copies of it): rows of the same image share it
image_of () {
  case $1 in
    rc64_1t4s) echo down1t4s ;;
    real8g_rc64) echo real8g_down ;;
    *) echo "$1" ;;
  esac
}

describe () {
  case $1 in
    down1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: compat 1.1 to 0.10" ;;
    up1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: compat 0.10 to 1.1" ;;
    rc64_1t4s) echo "1 TiB preallocation=metadata, 4 snapshots: refcount bits 16 to 64" ;;
    downfrag2) echo "20 GiB, 2 GiB random 64 KiB writes, 8,192 zeroed, raw backing: compat 1.1 to 0.10" ;;
    real8g_up) echo "realistic, 8 GiB, 2.5 GiB random 64 KiB writes, 2 snapshots: compat 0.10 to 1.1" ;;
    real8g_down) echo "realistic, 8 GiB, 2.5 GiB random 64 KiB writes, 4,096 zeroed, 2 snapshots: compat 1.1 to 0.10" ;;
    real8g_rc64) echo "realistic, 8 GiB, 2.5 GiB random 64 KiB writes, 2 snapshots: refcount bits 16 to 64" ;;
  esac
}
opts () {
  case $1 in
    down1t4s|downfrag2|real8g_down) echo "compat=0.10" ;;
    up1t4s|real8g_up) echo "compat=1.1" ;;
    rc64_1t4s|real8g_rc64) echo "refcount_bits=64" ;;
  esac
}


# a copy of the binary: a rebuild during the run cannot change it
qk=$BENCH_DIR/qcowkit-bench
cp "$(command -v qcowkit)" "$qk"
kw=$BENCH_DIR/amend-k.qcow2
qw=$BENCH_DIR/amend-q.qcow2
echo "| image | qcowkit amend | RSS | qemu-img amend | RSS | ratio | cp of the image (floor) |"
echo "|---|---|---|---|---|---|---|"
notes=
for r in ${BENCH_ONLY:-up1t4s down1t4s rc64_1t4s downfrag2 real8g_up real8g_down real8g_rc64}; do
  img=$BENCH_DIR/amend-$(image_of "$r").qcow2
  make_image "$(image_of "$r")" "$img"
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
  case $o in
    compat=*) want="compat: ${o#compat=}" ;;
    refcount_bits=*) want="refcount bits: ${o#refcount_bits=}" ;;
  esac
  qemu-img info "$kw" | grep -qx " *$want" ||
    { echo "qcowkit's amend of $r: qemu-img info does not say $want" >&2; exit 1; }
  qemu-img compare -q "$img" "$kw" ||
    { echo "qcowkit's amend of $r changed the guest data" >&2; exit 1; }
  mark=
  if ! qemu-img check "$qw" > "$BENCH_DIR/.qcheck" 2>&1; then
    mark=" (*)"
    notes="$notes
(*) $(describe "$r"): qemu-img check of qemu-img's result: $(grep -c '^ERROR' "$BENCH_DIR/.qcheck") errors, e.g. $(grep -m1 '^ERROR' "$BENCH_DIR/.qcheck")"
  fi
  qemu-img compare -q "$kw" "$qw" ||
    { echo "the two amends of $r differ in guest data" >&2; exit 1; }
  row "$(describe "$r")$mark" "$kbest" "$krss" "$qbest" "$qrss" | sed "s/\$/ $cbest s |/"
done
[ -z "${notes:-}" ] || echo "$notes"
rm -f "$kw" "$qw"
