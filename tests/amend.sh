#!/bin/bash
# qcowkit amend against qemu-img amend. Images made by qemu-img and
# qemu-io (every cluster size from 512 B to 2 MiB, both versions, every
# refcount width, snapshots, zero and preallocated zero clusters, zlib and
# zstd compressed clusters, extended L2, bitmaps, qcow2 and raw backing
# files, lazy refcounts, a snapshot of another size), each amended both
# ways on copies. Where both succeed: qemu-img check is clean on ours,
# the guest data is the original's and qemu-img's (qemu-img compare),
# qemu-img info gives the same compat, refcount bits, virtual size,
# backing file and snapshot list, and a second amend changes nothing.
# Where both refuse: the same reason (qemu-img's message is in ours) and
# our file byte for byte as it was. Where we differ on purpose, the
# difference is asserted and listed. Then: the fault sweep (killed or
# failed at every write and flush: qemu-img finds the image consistent,
# leaks at worst, with the original's guest data, in the old or the new
# version; a rerun finishes it; undo puts back the original bytes),
# QEMU's locks, dry runs and usage errors.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch
cd "$T" || exit 1

# (one process: sha256sum's " -" is cut by the shell)
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
# what qemu-img info says that amend may change, and must match
infox () {
  qemu-img info --output=json "$1" 2>/dev/null | jq -c '{
    compat: .["format-specific"].data.compat,
    refcount: .["format-specific"].data["refcount-bits"],
    lazy: .["format-specific"].data["lazy-refcounts"],
    size: .["virtual-size"], backing: .["backing-filename"],
    bfmt: .["backing-filename-format"],
    snaps: [(.snapshots // [])[] | {id, name, "vm-state-size", icount,
             "date-sec", "vm-clock-sec"}]}'
}
qcheck () { qemu-img check "$1" > /dev/null 2>&1; echo $?; }
# the qemu-img amend -o string for our options
qopts () {
  local o="" a
  for a in "$@"; do
    case $a in
      --compat=*) o="$o,compat=${a#--compat=}" ;;
      --refcount-bits=*) o="$o,refcount_bits=${a#--refcount-bits=}" ;;
    esac
  done
  echo "${o#,}"
}

# ---- images ----
# base images the overlays read through
qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 7 0 16M' base.raw > /dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 16M
qemu-io -c 'write -P 8 0 16M' base.qcow2 > /dev/null

qio () { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
         qemu-io -f qcow2 "${a[@]}" "$f" > /dev/null; }
mk_v2_c64k () {
  qemu-img create -q -f qcow2 -o compat=0.10 "$1" 64M
  qio "$1" 'write -P 1 0 1M' 'write -P 2 10M 512k'
  qemu-img snapshot -c s1 "$1"; qio "$1" 'write -P 3 0 64k'
}
mk_v2_c512 () {
  qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$1" 4M
  qio "$1" 'write -P 1 0 64k' 'write -P 2 1M 4k' 'write -P 3 3M 512'
  qemu-img snapshot -c s1 "$1"; qio "$1" 'write -P 4 1M 512'
}
mk_v2_c2m () {
  qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=2M "$1" 64M
  qio "$1" 'write -P 1 0 3M' 'write -P 2 32M 64k'
}
mk_v3_zero () {
  qemu-img create -q -f qcow2 "$1" 64M
  qio "$1" 'write -P 1 0 1M' 'write -z 2M 1M' 'write -P 5 4M 128k' \
      'write -z -u 4M 64k'
  qemu-img snapshot -c s1 "$1"; qio "$1" 'write -z 0 64k' 'write -P 6 8M 64k'
}
mk_v3_c4k_backing () {
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 "$1" 16M
  qio "$1" 'write -P 1 0 64k' 'write -z 1M 1M' 'write -z -u 4M 8k'
  qemu-img snapshot -c s1 "$1"; qio "$1" 'write -z 0 16k'
}
mk_v3_c512_raw_many () {  # 32,768 zero clusters over a raw backing file
  qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw "$1" 16M
  qio "$1" 'write -z 0 16M' 'write -P 3 1M 4k'
}
mk_v3_c2m () {
  qemu-img create -q -f qcow2 -o cluster_size=2M "$1" 64M
  qio "$1" 'write -P 1 0 3M' 'write -z 8M 4M' 'write -z -u 16M 2M'
}
mk_rc () {  # mk_rc BITS FILE
  qemu-img create -q -f qcow2 -o refcount_bits="$1" "$2" 64M
  qio "$2" 'write -P 1 0 1M' 'write -z 2M 64k'
  [ "$1" = 1 ] || { qemu-img snapshot -c s1 "$2"; qio "$2" 'write -P 2 0 64k'; }
}
mk_v3_rc1 () { mk_rc 1 "$1"; }
mk_v3_rc8 () { mk_rc 8 "$1"; }
mk_v3_rc64 () { mk_rc 64 "$1"; }
mk_v3_zlib () {
  qemu-img create -q -f qcow2 "$1" 16M
  qio "$1" 'write -c -P 1 0 1M' 'write -P 2 4M 64k'
  qemu-img snapshot -c s1 "$1"
}
mk_v3_zstd () {
  qemu-img create -q -f qcow2 -o compression_type=zstd "$1" 16M
  qio "$1" 'write -c -P 1 0 1M'
}
mk_v3_zstd_nocomp () {
  qemu-img create -q -f qcow2 -o compression_type=zstd "$1" 16M
  qio "$1" 'write -P 1 0 1M' 'write -z 2M 64k'
}
mk_v3_extl2 () {
  qemu-img create -q -f qcow2 -o extended_l2=on "$1" 16M
  qio "$1" 'write -P 1 0 1M' 'write -P 2 2M 4k'
}
mk_v3_bitmaps () {
  qemu-img create -q -f qcow2 "$1" 16M
  qemu-img bitmap --add "$1" b0
  qio "$1" 'write -P 1 0 1M'
}
mk_v3_lazy () {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on "$1" 16M
  qio "$1" 'write -P 1 0 1M' 'write -z 4M 64k'
}
mk_v3_snap_resized () {  # a snapshot of another virtual size
  qemu-img create -q -f qcow2 "$1" 16M
  qio "$1" 'write -P 1 0 1M'
  qemu-img snapshot -c small "$1"; qemu-img resize -q "$1" 32M
}
# images qcowkit's own corpus builder makes that qemu-img cannot: version
# 2 snapshots without extra data; a version 3 image left dirty (lazy
# refcounts not settled), which qemu-img settles on open and so do we
qcowkit fuzz-corpus fc > /dev/null 2>&1
mk_fc_v2snap () { cp fc/v2-c512-rc16-snapshots.qcow2 "$1"; }
mk_fc_dirty () { cp fc/v3-c4k-rc16-lazy-dirty.qcow2 "$1"; }
images="v2_c64k v2_c512 v2_c2m v3_zero v3_c4k_backing v3_c512_raw_many
        v3_c2m v3_rc1 v3_rc8 v3_rc64 v3_zlib v3_zstd v3_zstd_nocomp v3_extl2
        v3_bitmaps v3_lazy v3_snap_resized fc_v2snap fc_dirty"

# the operations tried on each image
ops_for () {
  case $1 in
    # (qemu-img amend takes minutes to change the width with 2 MiB clusters)
    *_c2m) echo "--compat=$([ "${1%%_*}" = v2 ] && echo 1.1 || echo 0.10)" ;;
    v2_*|fc_v2snap) echo "--compat=1.1 --compat=1.1,--refcount-bits=64
                --compat=1.1,--refcount-bits=1 --refcount-bits=8" ;;
    v3_rc*) echo "--compat=0.10 --compat=0.10,--refcount-bits=16
                  --refcount-bits=16 --refcount-bits=2 --refcount-bits=32" ;;
    *) echo "--compat=0.10 --refcount-bits=64 --refcount-bits=1" ;;
  esac
}

# Where we differ from qemu-img on purpose (image op -> why). qemu-img
# keeps persistent bitmaps in a version 2 image, where no version 2
# reader can use them and the next read-write open drops them (leaking
# their clusters); it repairs a dirty image silently on open where we say
# so and refuse.
deliberate () {
  case "$1 $2" in
    "v3_bitmaps --compat=0.10") echo "refuse: version 2 cannot hold bitmaps (qemu-img writes them into a v2 image that drops them on the next open)" ;;
  esac
}

matrix_pass=0
for img in $images; do
  mk_$img orig.qcow2 2> mk.err || { fail "$img: made by qemu-img" "$(head -3 mk.err)"; continue; }
  osha=$(sha orig.qcow2)
  for op in $(ops_for "$img"); do
    args=(${op//,/ })
    what="$img ${args[*]}"
    rm -f k.qcow2 q.qcow2
    cp orig.qcow2 k.qcow2; cp orig.qcow2 q.qcow2
    qcowkit amend "${args[@]}" k.qcow2 > k.out 2>&1; kr=$?
    qemu-img amend -o "$(qopts "${args[@]}")" q.qcow2 > q.out 2>&1; qr=$?
    why=$(deliberate "$img" "${args[*]}")
    if [ -n "$why" ]; then
      is "$kr $(sha k.qcow2)" "1 $osha" "$what: refused on purpose ($why), file untouched"
      diag "not comparable with qemu-img here (it exits $qr)"
      continue
    fi
    if [ "$kr" -ne 0 ] && [ "$qr" -ne 0 ]; then
      qmsg=$(sed -n 's/^qemu-img: //p' q.out | head -1)
      if [ -n "$qmsg" ] && grep -qF -- "$qmsg" k.out; then
        pass "$what: both refuse: $qmsg"
      else
        fail "$what: both refuse, for the same reason" "ours: $(head -2 k.out)" "qemu-img: $(head -2 q.out)"
      fi
      is "$(sha k.qcow2)" "$osha" "$what: a refusal leaves the file untouched"
      continue
    fi
    is "$kr" "$qr" "$what: exit status as qemu-img amend ($(head -c 200 q.out))"
    [ "$kr" -eq 0 ] && [ "$qr" -eq 0 ] || { diag "ours: $(head -3 k.out)"; continue; }
    is "$(qcheck k.qcow2)" 0 "$what: qemu-img check finds our result clean"
    qemu-img compare -q orig.qcow2 k.qcow2
    is "$?" 0 "$what: the guest data is the original's (qemu-img compare)"
    if qemu-img info q.qcow2 > /dev/null 2>&1; then
      qemu-img compare -q q.qcow2 k.qcow2
      is "$?" 0 "$what: the guest data is qemu-img's result's"
      is "$(infox k.qcow2)" "$(infox q.qcow2)" "$what: qemu-img info as after qemu-img amend"
    else
      diag "$what: qemu-img's own result cannot be opened ($(qemu-img info q.qcow2 2>&1 | head -1)): not comparable"
    fi
    s1=$(sha k.qcow2)
    qcowkit amend "${args[@]}" k.qcow2 > k2.out 2>&1
    is "$? $(sha k.qcow2)" "0 $s1" "$what: a second amend changes nothing"
    matrix_pass=$((matrix_pass + 1))
  done
done
diag "matrix: $matrix_pass image/operation pairs amended and compared"

# The 32,768 zero clusters over a raw backing file made data clusters
# needed new refcount blocks and a larger refcount table: say so.
mk_v3_c512_raw_many g.qcow2
t0=$(qemu-img info --output=json g.qcow2 | jq -r '.["actual-size"]')
qcowkit amend --compat=0.10 --output=json g.qcow2 > g.json
is "$(jq -r '.["zero-clusters-allocated"]' g.json)" 32760 "512 B clusters over a raw backing file: 32,760 zero clusters made data (the 8 of the 4 KiB write were data already)"
is "$(qcheck g.qcow2)" 0 "  and the grown refcount structure checks clean"

# ---- the unknown header fields qemu-img copies into a v2 header ----
# A v3 header longer than 112 bytes: qemu-img amend compat=0.10 copies the
# unknown fields to offset 72, where a version 2 reader expects the
# extensions, and its result cannot be opened; ours drops them (a version
# 2 header has no room for them) and opens.
qemu-img create -q -f qcow2 u.qcow2 16M
qio u.qcow2 'write -P 1 0 64k'
cp fc/v3-c4k-rc16-unknown.qcow2 u.qcow2 && cp u.qcow2 uq.qcow2 && cp u.qcow2 uo.qcow2
qcowkit amend --compat=0.10 u.qcow2 > /dev/null 2>&1
is "$?" 0 "header with unknown fields: amended to 0.10"
qemu-img amend -o compat=0.10 uq.qcow2 > /dev/null 2>&1
qemu-img info uq.qcow2 > uq.out 2>&1
grep -q "Header extension too large" uq.out
is "$?" 0 "  (qemu-img's result cannot be opened: 'Header extension too large')"
qemu-img compare -q uo.qcow2 u.qcow2
is "$?" 0 "  ours keeps the guest data (qemu-img compare with the original)"

# ---- upgrades that would change what the guest reads (fuzz-amend) ----
# (a) The zero flag in a version 2 L2 entry: reserved there, so QEMU
# calls the image corrupt and fails to read the cluster, and qcowkit
# check warns; qcowkit reads zeros, as both do after an upgrade. Ours
# upgrades it as qemu-img amend does, to the same guest data.
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 zf.qcow2 1M
qio zf.qcow2 'write -P 0x5a 0 4k'
l2=$(( $(qcowkit dump zf.qcow2 l1 | sed -n 's/^L1\[0\] = //p') & 0xfffffffffe00 ))
printf '\001' | dd of=zf.qcow2 bs=1 seek=$((l2 + 7)) conv=notrunc status=none
qemu-img convert -O raw zf.qcow2 zf.raw > zf.qout 2>&1
is "$?" 1 "v2 entry with the zero flag: qemu-img cannot read it"
grep -q "Zero cluster entry found in pre-v3 image" zf.qout
is "$?" 0 "  (it calls the image corrupt)"
qcowkit check zf.qcow2 2>&1 | grep -q "has the zero flag in a version 2 image"
is "$?" 0 "  qcowkit check warns of it"
cp zf.qcow2 zfq.qcow2
qcowkit amend --compat=1.1 zf.qcow2
is "$?" 0 "  qcowkit amend upgrades it"
qemu-img amend -o compat=1.1 zfq.qcow2
qemu-img compare -q zf.qcow2 zfq.qcow2
is "$?" 0 "  to the guest data of qemu-img amend's result"
qemu-img convert -O raw zf.qcow2 zf.raw && cmp -s -n 4096 zf.raw /dev/zero
is "$?" 0 "  which reads zeros there"
# (b) A table in the header cluster, which the upgrade writes again: the
# fuzz input had its L1 table at offset 0, and the new header changed
# its entries (qemu-img's upgrade too).
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 hc.qcow2 1M
qio hc.qcow2 'write -P 7 0 512'
printf '\000\000\000\000\000\000\000\000' | dd of=hc.qcow2 bs=1 seek=40 conv=notrunc status=none
s0=$(sha hc.qcow2)
qcowkit amend --compat=1.1 hc.qcow2 > hc.out 2>&1
is "$? $(sha hc.qcow2)" "1 $s0" "an L1 table in the header cluster: the upgrade is refused, the file untouched"
grep -q "the L1 table is in the header cluster" hc.out
is "$?" 0 "  and says why"

# ---- fault sweep ----
# killed (SIGKILL) or failed (EIO) at each write and flush; then (a)
# qemu-img check finds it consistent, leaks at worst, with the original's
# guest data, version old or new; (b) undo puts back the original bytes;
# (c) the same command again finishes: the version asked, clean, the
# original's guest data.
# (infox's compat and refcount, in one jq)
vers () {
  qemu-img info --output=json "$1" 2>/dev/null |
    jq -c '[.["format-specific"].data.compat, .["format-specific"].data["refcount-bits"]]'
}
amend_run () {  # FAULT ARGS...: on a fresh copy f.qcow2 of o.qcow2
  rm -f f.qcow2 j.undo
  cp o.qcow2 f.qcow2
  QCOWKIT_FAULT=$1 qcowkit amend --undo j.undo "${@:2}" f.qcow2 > f.out 2>&1
}
amend_done () { [ "$(vers f.qcow2)" = "$nv" ]; }
amend_verify () {  # FAULT ARGS...
  shift
  local v c
  qemu-img check f.qcow2 > /dev/null 2>&1; c=$?
  case $c in 0|3) ;; *) sweep_bad "check-$c" ;; esac
  qemu-img compare -q o.qcow2 f.qcow2 || sweep_bad guest-data
  v=$(vers f.qcow2)
  [ "$v" = "$ov" ] || [ "$v" = "$nv" ] || [ "$v" = "${MID:-}" ] ||
    sweep_bad "version=$v"
  cp f.qcow2 r.qcow2
  qcowkit amend "$@" r.qcow2 > /dev/null 2>&1 || sweep_bad rerun-failed
  qemu-img check r.qcow2 > /dev/null 2>&1 || sweep_bad rerun-not-clean
  [ "$(vers r.qcow2)" = "$nv" ] || sweep_bad rerun-version
  qemu-img compare -q o.qcow2 r.qcow2 || sweep_bad rerun-guest-data
  sweep_undone j.undo f.qcow2 "$osha"
}
sweep () {  # sweep NAME MAKER ARGS...
  local name=$1 maker=$2; shift 2
  local osha ov nv
  $maker o.qcow2
  osha=$(sha o.qcow2)
  ov=$(vers o.qcow2)
  cp o.qcow2 n.qcow2; qcowkit amend "$@" n.qcow2 > /dev/null 2>&1
  nv=$(vers n.qcow2)
  fault_sweep "$name" "consistent, guest data kept, old or new version; undo restores; a rerun finishes" \
    60 amend_run amend_verify amend_done "$@"
}
sweep "upgrade with the snapshot table rewritten" mk_fc_v2snap --compat=1.1
sweep "downgrade, zero clusters over a qcow2 backing file" mk_v3_c4k_backing --compat=0.10
sweep "refcount width 16 to 64" mk_v3_zero --refcount-bits=64
# (between its two steps: version 3 with 16-bit refcounts)
MID='["1.1",16]' sweep "64-bit refcounts to 0.10, both steps" mk_v3_rc64 --compat=0.10 --refcount-bits=16

# ---- QEMU's locks ----
mk_v3_zero busy.qcow2
ok "qemu-io holds busy.qcow2 open (qemu-img info refuses it for the lock)" start_holder busy.qcow2
s0=$(sha busy.qcow2)
qcowkit amend --compat=0.10 busy.qcow2 > out 2>&1
is "$?" 1 "amend refuses an image QEMU has open: exit 1"
grep -q "in use" out
is "$?" 0 "  and says it is in use"
is "$(sha busy.qcow2)" "$s0" "  the image in use was not written"
stop_holder

# ---- dry run, undo, usage ----
mk_v3_zero d.qcow2
s0=$(sha d.qcow2)
qcowkit amend -n --compat=0.10 d.qcow2 > out 2>&1
is "$? $(sha d.qcow2)" "0 $s0" "amend -n: exit 0, nothing written"
grep -q "Would amend d.qcow2: compat 1.1 -> 0.10" out
is "$?" 0 "  and says what it would do"
qcowkit amend --undo d.undo --compat=0.10 d.qcow2 > /dev/null 2>&1
is "$(infox d.qcow2 | jq -r .compat)" "0.10" "amend --undo: amended"
qcowkit undo d.undo d.qcow2 > /dev/null 2>&1
is "$? $(sha d.qcow2)" "0 $s0" "qcowkit undo puts back the original bytes"
qcowkit amend d.qcow2 > out 2>&1
is "$?" 2 "amend without a change to make: usage error, exit 2"
qcowkit amend --compat=2.0 d.qcow2 > out 2>&1
is "$?" 2 "an unknown compat level: exit 2"
grep -q "Unknown compatibility level 2.0" out
is "$?" 0 "  with qemu-img's message"
qcowkit amend -o cluster_size=4096 d.qcow2 > out 2>&1
is "$?" 2 "-o with an option amend does not change: exit 2"
qcowkit amend --compat=1.1 missing.qcow2 > out 2>&1
is "$?" 1 "a missing image: exit 1"
printf 'not an image' > junk.img
s0=$(sha junk.img)
qcowkit amend --compat=1.1 junk.img > out 2>&1
is "$? $(sha junk.img)" "1 $s0" "a file that is not qcow2: exit 1, untouched"

done_testing
