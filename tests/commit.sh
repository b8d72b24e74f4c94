#!/bin/bash
# qcowkit commit against qemu-img commit. Chains made by qemu-img and
# qemu-io: overlays of 512 B to 2 MiB clusters, both versions, with data,
# zero, preallocated zero, compressed (deflate and zstd) and partial
# clusters and extended L2 subclusters, over bases of other cluster sizes
# and refcount widths, with an internal snapshot, smaller than the
# overlay, version 2, raw; 3-deep chains with -b; -d. Each committed by
# both tools on copies. Then: qemu-img check clean on every image written;
# the base's guest data identical to qemu-img's result (qemu-img compare)
# and to what the overlay read before; the overlay reads the same as
# before (through the base) and as qemu-img's; the base's virtual size
# and snapshots as qemu-img's, the snapshot's data unchanged. Then the
# fault sweep (killed or failed at every write and flush of the base and
# the overlay: the overlay reads as before, every image checks with leaks
# at worst, a rerun finishes, the journals put back the original bytes),
# QEMU's locks, dry runs and refusals.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch
cd "$T" || exit 1

sha () { sha256sum < "$1" | cut -d' ' -f1; }
qcheck () { qemu-img check "$1" > /dev/null 2>&1; echo $?; }
qio () { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
         qemu-io -f qcow2 "${a[@]}" "$f" > /dev/null; }
vsize () { qemu-img info --output=json "$1" | jq -r '.["virtual-size"]'; }
snaps () { qemu-img info --output=json "$1" | jq -c '[(.snapshots // [])[].name]'; }

# ---- the chains: base (B), overlay (O) ----
# each maker writes base.qcow2 (or base.raw) and top.qcow2 in .
data_writes=('write -P 3 6M 1M' 'write -z 10M 1M' 'write -P 6 100k 3k'
             'write -P 7 30M 64k' 'write -z -u 30M 64k')
mk_b64k_o4k () {
  qemu-img create -q -f qcow2 base.qcow2 64M; qio base.qcow2 'write -P 1 0 32M'
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "${data_writes[@]}" 'write -c -P 4 12M 64k'
}
mk_b512_o2m () {
  qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 16M
  qio base.qcow2 'write -P 1 0 8M'
  qemu-img create -q -f qcow2 -o cluster_size=2M -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 3 1M 2M' 'write -z 6M 2M' 'write -P 6 9M 3k'
}
mk_b2m_o512 () {
  qemu-img create -q -f qcow2 -o cluster_size=2M base.qcow2 16M
  qio base.qcow2 'write -P 1 0 8M'
  qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 3 1M 4k' 'write -z 6M 1k' 'write -P 6 9M 700'
}
mk_snapbase_grow () {   # the base has a snapshot and is smaller
  qemu-img create -q -f qcow2 -o refcount_bits=8 base.qcow2 32M
  qio base.qcow2 'write -P 1 0 16M'; qemu-img snapshot -c bs base.qcow2
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 96M
  qio top.qcow2 "${data_writes[@]}" 'write -P 5 70M 1M' 'write -c -P 4 80M 64k'
}
mk_v2base () {
  qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 32M
  qio base.qcow2 'write -P 1 0 16M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "${data_writes[@]}"
}
mk_v2both () {
  qemu-img create -q -f qcow2 -o compat=0.10,refcount_bits=16 base.qcow2 32M
  qio base.qcow2 'write -P 1 0 16M'
  qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 3 6M 1M' 'write -P 6 100k 3k'
}
mk_rc64_zstd () {
  qemu-img create -q -f qcow2 -o refcount_bits=64 base.qcow2 32M
  qio base.qcow2 'write -P 1 0 16M'
  qemu-img create -q -f qcow2 -o compression_type=zstd -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -c -P 4 2M 1M' 'write -P 3 6M 64k'
}
mk_extl2top () {
  qemu-img create -q -f qcow2 base.qcow2 32M; qio base.qcow2 'write -P 1 0 16M'
  qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 3 4k 4k' 'write -z 1M 8k' 'write -P 5 8M 1M'
}
mk_rawbase () {
  qemu-img create -q -f raw base.raw 16M
  qemu-io -f raw -c 'write -P 1 0 8M' base.raw > /dev/null
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 32M
  qio top.qcow2 'write -P 3 1M 1M' 'write -z 4M 1M' 'write -P 5 20M 1M'
}
mk_bitmapbase () {
  qemu-img create -q -f qcow2 base.qcow2 32M; qio base.qcow2 'write -P 1 0 16M'
  qemu-img bitmap --add base.qcow2 b0
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 3 6M 1M'
}
chains="b64k_o4k b512_o2m b2m_o512 snapbase_grow v2base v2both rc64_zstd
        extl2top rawbase bitmapbase"

base_of () { [ -f base.raw ] && echo base.raw || echo base.qcow2; }
bfmt () { [ -f base.raw ] && echo raw || echo qcow2; }

for ch in $chains; do
  rm -rf k q && mkdir k q
  (cd k && mk_$ch) 2> mk.err || { fail "$ch: made by qemu-img" "$(head -2 mk.err)"; continue; }
  cp -a k/. q/
  b=$(cd k && base_of); f=$(cd k && bfmt)
  qemu-img convert -O raw k/top.qcow2 view.raw
  bview_before=$(cd k && qemu-img snapshot -l "$b" 2>/dev/null | awk 'NR>2{print $2}' | head -1)
  [ -n "$bview_before" ] && qemu-img convert -l "snapshot.name=$bview_before" -O raw "k/$b" snap.raw
  (cd k && qcowkit commit top.qcow2) > k.out 2>&1; kr=$?
  (cd q && qemu-img commit top.qcow2) > q.out 2>&1; qr=$?
  is "$kr" "$qr" "$ch: exit status as qemu-img commit"
  [ "$kr" = 0 ] && [ "$qr" = 0 ] || { diag "$(head -2 k.out) | $(head -2 q.out)"; continue; }
  if [ "$f" = qcow2 ]; then
    is "$(qcheck "k/$b")" 0 "$ch: qemu-img check finds our base clean"
    is "$(vsize "k/$b") $(snaps "k/$b")" "$(vsize "q/$b") $(snaps "q/$b")" "$ch: the base's virtual size and snapshots as qemu-img's"
  fi
  is "$(qcheck k/top.qcow2)" 0 "$ch: qemu-img check finds our emptied overlay clean"
  qemu-img compare -q -f "$f" -F "$f" "k/$b" "q/$b"
  is "$?" 0 "$ch: the base's guest data is qemu-img's result's"
  qemu-img compare -q -f raw -F qcow2 view.raw k/top.qcow2
  is "$?" 0 "$ch: the overlay reads as before (through the base)"
  qemu-img compare -q k/top.qcow2 q/top.qcow2
  is "$?" 0 "$ch: and as qemu-img's overlay"
  is "$(qemu-img map --output=json k/top.qcow2 | jq '[.[] | select(.depth == 0 and .present)] | length')" 0 \
     "$ch: the overlay holds nothing any more (qemu-img map: nothing at depth 0)"
  if [ -n "$bview_before" ]; then
    # (qemu-img convert reads a snapshot at the image's current size:
    # compare what it had, and the rest with qemu-img's result)
    qemu-img convert -l "snapshot.name=$bview_before" -O raw "k/$b" snap2.raw
    qemu-img convert -l "snapshot.name=$bview_before" -O raw "q/$b" snap3.raw
    cmp -s -n "$(stat -c %s snap.raw)" snap.raw snap2.raw && cmp -s snap2.raw snap3.raw
    is "$?" 0 "$ch: the base's internal snapshot reads as before, and as after qemu-img commit"
  fi
done

# ---- the base's bitmap marks the commit ----
rm -rf k && mkdir k && (cd k && mk_bitmapbase)
(cd k && qcowkit commit --output=json top.qcow2) > k.json 2>&1
is "$(jq -r '.["bitmaps-marked"]' k.json)" 1 "a base with an enabled bitmap: the bitmap marks the commit"
is "$(qemu-img info --output=json k/base.qcow2 | jq -c '[.["format-specific"].data.bitmaps[] | .name, .flags]')" \
   '["b0",["auto"]]' "  qemu-img info: the bitmap is still there, enabled, not in use"
is "$(qcheck k/base.qcow2)" 0 "  qemu-img check clean"
# the 1 MiB at 6 MiB: table entry 0 (64 KiB granularity: 32 GiB per
# entry), 0 (nothing dirty) before, 1 (all ones) after
is "$(qcowkit dump --output=json k/base.qcow2 bitmap-table 0 | jq -r '.[0]')" 1 \
   "  its table entry covering the committed range is all ones (qcowkit dump)"

# ---- -d: the overlay keeps its data ----
rm -rf k q && mkdir k q && (cd k && mk_b64k_o4k) && cp -a k/. q/
tsha=$(sha k/top.qcow2)
(cd k && qcowkit commit -d top.qcow2) > /dev/null 2>&1
(cd q && qemu-img commit -d top.qcow2) > /dev/null 2>&1
is "$(sha k/top.qcow2)" "$tsha" "-d: the overlay is not written"
qemu-img compare -q k/base.qcow2 q/base.qcow2
is "$?" 0 "-d: the base as qemu-img's"

# ---- -b: three deep ----
mk3 () {
  qemu-img create -q -f qcow2 base.qcow2 32M; qio base.qcow2 'write -P 1 0 16M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
  qio mid.qcow2 'write -P 2 2M 4M' 'write -z 8M 1M'
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2 48M
  qio top.qcow2 'write -P 3 3M 64k' 'write -P 5 40M 1M'
}
rm -rf k q && mkdir k q && (cd k && mk3) && cp -a k/. q/
qemu-img convert -O raw k/top.qcow2 view.raw
tsha=$(sha k/top.qcow2); msha=$(sha k/mid.qcow2)
(cd k && qcowkit commit -b base.qcow2 top.qcow2) > k.out 2>&1; kr=$?
(cd q && qemu-img commit -b base.qcow2 top.qcow2) > q.out 2>&1; qr=$?
is "$kr $qr" "0 0" "-b base, 3 deep: both commit"
qemu-img compare -q k/base.qcow2 q/base.qcow2
is "$?" 0 "-b base, 3 deep: the base as qemu-img's (what the middle and the top held)"
qemu-img compare -q -f raw -F qcow2 view.raw k/base.qcow2
is "$?" 0 "  the base now reads what the top read"
is "$(sha k/top.qcow2) $(sha k/mid.qcow2)" "$tsha $msha" "  the top and the middle are not written (-b implies -d)"
is "$(qcheck k/base.qcow2)" 0 "  qemu-img check finds the base clean"
(cd k && qcowkit commit -b nothere.qcow2 top.qcow2) > k.out 2>&1
is "$?" 1 "-b with an image not in the chain: exit 1"
grep -q "Did not find 'nothere.qcow2' in the backing chain of 'top.qcow2'" k.out
is "$?" 0 "  with qemu-img's message"

# ---- into a base that has a backing file of its own ----
# (the top into the middle of a 3-deep chain, and -b the middle: the
# base's check must not take its unopened backing file for a missing one)
for how in "" "-b mid.qcow2"; do
  rm -rf k q && mkdir k q && (cd k && mk3) && cp -a k/. q/
  qemu-img convert -O raw k/top.qcow2 view.raw
  (cd k && qcowkit commit $how top.qcow2) > k.out 2>&1; kr=$?
  (cd q && qemu-img commit $how top.qcow2) > q.out 2>&1; qr=$?
  is "$kr $qr" "0 0" "commit ${how:-(default)} into the middle image (which has a backing file): both commit"
  [ "$kr" -eq 0 ] || diag "$(cat k.out)"
  qemu-img compare -q k/mid.qcow2 q/mid.qcow2
  is "$?" 0 "  the middle image reads as qemu-img's"
  qemu-img compare -q -f raw -F qcow2 view.raw k/mid.qcow2
  is "$?" 0 "  the middle image reads what the top read"
  is "$(qcheck k/mid.qcow2)" 0 "  qemu-img check finds it clean"
done

# ---- refusals ----
qemu-img create -q -f qcow2 alone.qcow2 16M
s0=$(sha alone.qcow2)
qcowkit commit alone.qcow2 > k.out 2>&1
is "$? $(sha alone.qcow2)" "1 $s0" "an image without a backing file: exit 1, untouched"
grep -q "Image does not have a backing file" k.out
is "$?" 0 "  with qemu-img's message"

# ---- fault sweep ----
commit_run () {  # FAULT ARGS...: on a fresh copy f/ of the chain in o/
  rm -rf f && cp -a o f
  (cd f && QCOWKIT_FAULT=$1 exec qcowkit commit --undo j "${@:2}" top.qcow2) \
    > f.out 2>&1
}
commit_verify () {  # FAULT ARGS...
  shift
  local i
  for i in base top; do
    case $(qcheck f/$i.qcow2) in 0|3) ;; *) sweep_bad "$i-check-$(qcheck f/$i.qcow2)" ;; esac
  done
  qemu-img compare -q -f raw -F qcow2 view.raw f/top.qcow2 || sweep_bad guest-data
  rm -rf r && cp -a f r && rm -f r/j.base r/j.top
  (cd r && qcowkit commit "$@" top.qcow2) > /dev/null 2>&1 || sweep_bad rerun-failed
  [ "$(qcheck r/base.qcow2)$(qcheck r/top.qcow2)" = 00 ] || sweep_bad rerun-not-clean
  qemu-img compare -q -f raw -F qcow2 view.raw r/top.qcow2 || sweep_bad rerun-guest-data
  [ -f f/j.top ] && { (cd f && qcowkit undo j.top top.qcow2) > /dev/null 2>&1 || sweep_bad undo-top; }
  [ -f f/j.base ] && { (cd f && qcowkit undo j.base base.qcow2) > /dev/null 2>&1 || sweep_bad undo-base; }
  [ "$(sha f/base.qcow2) $(sha f/top.qcow2)" = "$bsha $tsha" ] || sweep_bad undo-differs
}
sweep () {  # sweep NAME MAKER ARGS...
  local name=$1 maker=$2; shift 2
  rm -rf o && mkdir o && (cd o && $maker)
  qemu-img convert -O raw o/top.qcow2 view.raw
  local bsha tsha
  bsha=$(sha o/base.qcow2); tsha=$(sha o/top.qcow2)
  fault_sweep "$name" "the overlay reads as before, leaks at worst, a rerun finishes, undo restores" \
    60 commit_run commit_verify : "$@"
}
mk_small () {   # a base with a snapshot, smaller than the overlay
  qemu-img create -q -f qcow2 base.qcow2 8M; qio base.qcow2 'write -P 1 0 4M'
  qemu-img snapshot -c bs base.qcow2
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 16M
  qio top.qcow2 'write -P 3 64k 128k' 'write -z 1M 64k' 'write -P 5 12M 64k'
}
sweep "into a smaller base with a snapshot, the overlay emptied" mk_small

# ---- locks, dry run ----
rm -rf k && mkdir k && (cd k && mk_small)
ok "qemu-io holds k/top.qcow2 open (qemu-img info refuses it for the lock)" start_holder k/top.qcow2
s0="$(sha k/base.qcow2) $(sha k/top.qcow2)"
(cd k && qcowkit commit top.qcow2) > out 2>&1
is "$?" 1 "commit refuses a chain QEMU has open: exit 1"
grep -q "in use" out
is "$?" 0 "  and says it is in use"
is "$(sha k/base.qcow2) $(sha k/top.qcow2)" "$s0" "  nothing was written"
stop_holder
(cd k && qcowkit commit -n top.qcow2) > out 2>&1
is "$? $(sha k/base.qcow2) $(sha k/top.qcow2)" "0 $s0" "commit -n: exit 0, nothing written"
grep -q "Would commit top.qcow2: 4 clusters" out
is "$?" 0 "  and says how many base clusters it would write"

done_testing
