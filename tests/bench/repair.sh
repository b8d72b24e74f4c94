#!/bin/bash
# qcowkit check -r all against qemu-img check -r all, same run, same
# damaged images, the tools interleaved run by run; every run repairs a
# fresh copy (the copy is not timed). Both tools' stderr ("Repairing
# cluster ..." lines) goes to /dev/null. Rows:
# - 64 GiB preallocation=metadata, every refcount one too high (1,048,576
#   leaks, refcount=2 reference=1): every refcount block rewritten;
# - 1 TiB preallocation=metadata, one refcount in 128 one too high
#   (131,072 leaks spread over all 512 refcount blocks);
# - 1 TiB preallocation=metadata whose refcount table entries are all
#   zeroed: the refcount structure is rebuilt in fresh clusters;
# - the same two damages on the 1 TiB image with 4 internal snapshots
#   (one refcount in 168 +1: about 100,000 leaks; the table zeroed);
# - images written the way VMs write them: 20 GiB with 8 GiB in random
#   64 KiB writes, every refcount +1 (131,072 leaks in random host order);
#   8 GiB written compressed in random order, refcount table zeroed
#   (compressed clusters share host clusters: the rebuild must count
#   each reference).
# Afterwards each tool's result must check clean with qemu-img check.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# bump IMG STEP: add 1 to every STEP-th nonzero refcount (16-bit refcounts)
bump () {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
path, step = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    h = f.read(104)
    cb = struct.unpack(">I", h[20:24])[0]
    rt, rtc = struct.unpack(">QI", h[48:60])
    cs = 1 << cb
    f.seek(rt)
    table = struct.unpack(">%dQ" % (rtc * cs // 8), f.read(rtc * cs))
    k = 0
    for e in table:
        off = e & 0x00fffffffffffe00
        if not off:
            continue
        f.seek(off)
        blk = bytearray(f.read(cs))
        for i in range(0, cs, 2):
            v = (blk[i] << 8) | blk[i + 1]
            if v:
                if k % step == 0:
                    v += 1
                    blk[i], blk[i + 1] = v >> 8, v & 0xff
                k += 1
        f.seek(off)
        f.write(blk)
EOF
}

# zero_reftable IMG: every refcount table entry zeroed
zero_reftable () {
  python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(104)
    cb = struct.unpack(">I", h[20:24])[0]
    rt, rtc = struct.unpack(">QI", h[48:60])
    f.seek(rt)
    f.write(bytes(rtc << cb))
EOF
}

make_image () {  # make_image NAME FILE
  [ -f "$2" ] && return
  case $1 in
    leaks64g)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 64G
      bump "$2.tmp" 1 ;;
    leaks1t)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 1T
      bump "$2.tmp" 128 ;;
    rebuild1t)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 1T
      zero_reftable "$2.tmp" ;;
    leaks1t4s|rebuild1t4s)
      qemu-img create -q -f qcow2 -o preallocation=metadata "$2.tmp" 1T
      for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$2.tmp"; done
      if [ "$1" = leaks1t4s ]; then bump "$2.tmp" 168; else zero_reftable "$2.tmp"; fi ;;
    leaksfrag)
      qemu-img create -q -f qcow2 "$2.tmp" 20G
      randwrites "$2.tmp" 131072 327680 65536 65536 1
      bump "$2.tmp" 1 ;;
    rebuildcomp)
      qemu-img create -q -f qcow2 "$2.tmp" 8G
      randwrites "$2.tmp" 131072 131072 65536 65536 7 -c
      zero_reftable "$2.tmp" ;;
  esac
  mv "$2.tmp" "$2"
}

describe () {
  case $1 in
    leaks64g) echo "64 GiB preallocation=metadata, 1,048,576 leaks (every refcount +1)" ;;
    leaks1t) echo "1 TiB preallocation=metadata, 131,072 leaks (one refcount in 128 +1)" ;;
    rebuild1t) echo "1 TiB preallocation=metadata, refcount table zeroed (rebuild)" ;;
    leaks1t4s) echo "1 TiB preallocation=metadata, 4 snapshots, ~100,000 leaks (one refcount in 168 +1)" ;;
    rebuild1t4s) echo "1 TiB preallocation=metadata, 4 snapshots, refcount table zeroed (rebuild)" ;;
    leaksfrag) echo "20 GiB, 8 GiB in random 64 KiB writes, every refcount +1 (131,072+ leaks)" ;;
    rebuildcomp) echo "8 GiB written compressed in random order, refcount table zeroed (rebuild)" ;;
  esac
}


work=$BENCH_DIR/repair-work.qcow2
echo "| image | qcowkit check -r all | RSS | qemu-img check -r all | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for r in ${BENCH_ONLY:-leaks64g leaks1t rebuild1t leaks1t4s rebuild1t4s leaksfrag rebuildcomp}; do
  img=$BENCH_DIR/repair-$r.qcow2
  make_image "$r" "$img"
  qbest= qrss= kbest= krss=
  for _ in $(seq "$RUNS"); do
    cp --sparse=always "$img" "$work"
    read -r t m < <(timed_any "$(command -v qcowkit)" check -r all "$work")
    if [ -z "$kbest" ] || awk "BEGIN{exit !($t < $kbest)}"; then kbest=$t krss=$m; fi
    qemu-img check "$work" >/dev/null 2>&1 ||
      { echo "qcowkit's repair of $r does not check clean" >&2; exit 1; }
    cp --sparse=always "$img" "$work"
    read -r t m < <(timed_any qemu-img check -r all "$work")
    if [ -z "$qbest" ] || awk "BEGIN{exit !($t < $qbest)}"; then qbest=$t qrss=$m; fi
    qemu-img check "$work" >/dev/null 2>&1 ||
      { echo "qemu-img's repair of $r does not check clean" >&2; exit 1; }
  done
  row "$(describe "$r")" "$kbest" "$krss" "$qbest" "$qrss"
done
rm -f "$work"
