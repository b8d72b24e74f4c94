#!/bin/bash
# qcowkit repair, undo and check -r: the answer modes, the questions on a
# terminal, exit codes, the lost-range report, the undo journal's refusals,
# QEMU's locks, and the fault sweep: the repair killed (SIGKILL) or failed
# at every write and every flush, then (a) qemu-img finds the image no
# worse than before, (b) undo puts back the original bytes, (c) a rerun
# finishes the repair to a clean image.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq qkpoke
scratch
srcdir=$(cd "$srcdir" && pwd)
cd "$T" || exit 1

# (one process: sha256sum's " -" is cut by the shell)
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
stamp () { echo "$(sha "$1") $(stat -c %y "$1")"; }
# build CASE FILE: the image of a check catalog case
build () {
  rm -rf "$T/b" && mkdir -p "$T/b" &&
  (cd "$T/b" && IMG=$T/b/x.qcow2 bash -ec '. "$1"; . "$2"' s \
     "$srcdir/tests/check/functions.sh" "$srcdir/tests/check/$1/script") \
     >/dev/null 2>&1 && cp "$T/b/x.qcow2" "$2"
}
qcorr () { qemu-img check --output=json "$1" 2>/dev/null | jq -r '.corruptions // 0'; }
kcorr () { qcowkit check --output=json "$1" 2>/dev/null | jq -r '.corruptions // 0'; }

# ---- modes and exit codes ----
build leak-l2-entry-cleared leak.qcow2 || fail "build leak"
s0=$(stamp leak.qcow2)
qcowkit repair leak.qcow2 < /dev/null > out 2>&1
is "$?" 4 "repair off a terminal defaults to -n: exit 4, problems left"
is "$(stamp leak.qcow2)" "$s0" "repair -n wrote nothing"
grep -q "Free 1 leaked clusters? no" out
is "$?" 0 "repair -n says what it would do: 'Free 1 leaked clusters? no'"
[ ! -e leak.qcow2.qkundo ]
is "$?" 0 "repair -n makes no undo journal"
qcowkit repair -p leak.qcow2 > out 2>&1
is "$?" 1 "repair -p frees leaks (a preen fix): exit 1, fixed"
grep -q "Freed 1 leaked clusters." out
is "$?" 0 "repair -p says what it did"
is "$(qemu-img check leak.qcow2 >/dev/null 2>&1; echo $?)" 0 "qemu-img check finds the result clean"
[ -s leak.qcow2.qkundo ]
is "$?" 0 "the default undo journal is IMAGE.qkundo"
s1=$(sha leak.qcow2)
qcowkit repair -p leak.qcow2 > out 2>&1
is "$?" 0 "a second repair finds it clean: exit 0"
is "$(sha leak.qcow2)" "$s1" "and changes nothing"
build leak-l2-entry-cleared leak2.qcow2
cp leak.qcow2.qkundo leak2.qcow2.qkundo
s2=$(stamp leak2.qcow2)
qcowkit repair -y leak2.qcow2 > out 2>&1
is "$?" 8 "an existing undo journal is never overwritten: exit 8"
grep -q "qcowkit undo leak2.qcow2.qkundo leak2.qcow2" out
is "$?" 0 "and the message says how to apply it"
is "$(stamp leak2.qcow2)" "$s2" "nor is the image written then"
qcowkit undo leak.qcow2.qkundo leak2.qcow2 > out 2>&1
is "$?" 1 "undo refuses a journal of another image"
qcowkit undo leak.qcow2.qkundo leak.qcow2 > out 2>&1
is "$?" 0 "undo applies the journal"
build leak-l2-entry-cleared leak3.qcow2
is "$(sha leak.qcow2)" "$(sha leak3.qcow2)" "undo put back the original bytes"
qcowkit undo leak.qcow2.qkundo leak.qcow2 > out 2>&1
is "$?" 1 "undo refuses a journal applied already"
qcowkit repair -n -y leak.qcow2 > out 2>&1
is "$?" 16 "-n and -y together: usage error, exit 16"
qcowkit repair --undo x --no-undo leak.qcow2 > out 2>&1
is "$?" 16 "--undo with --no-undo: exit 16"
qcowkit check -r sometimes leak.qcow2 > out 2>&1
is "$?" 1 "check -r takes leaks or all (exit 1 as qemu-img)"
qcowkit check -r all --chain leak.qcow2 > out 2>&1
is "$?" 1 "check -r does not go with --chain"
is "$(sha leak.qcow2)" "$(sha leak3.qcow2)" "refused runs wrote nothing"

# ---- check -r: qemu-img's output ----
cp leak3.qcow2 q.qcow2
qcowkit check -r leaks leak.qcow2 > out 2> err
is "$?" 0 "check -r leaks: exit 0 (the image after the repair is clean)"
qemu-img check -r leaks q.qcow2 > qout 2> qerr
diff <(grep -v "^Image end\|allocated" out) <(grep -v "^Image end\|allocated" qout) > d
is "$?" 0 "check -r leaks prints what qemu-img check -r leaks prints"
grep -q "^Repairing cluster 6 refcount=1 reference=0$" err
is "$?" 0 "with qemu-img's 'Repairing cluster' line"
cp leak3.qcow2 j.qcow2
qcowkit check -r all --output=json j.qcow2 > j.json 2>/dev/null
is "$(jq -r '."leaks-fixed"' j.json)" 1 "check -r JSON: leaks-fixed, as qemu-img's"
is "$(jq -r '.leaks // 0' j.json)" 0 "and the counts of the check after the repair"

# ---- a fix that loses guest data: -p leaves it, -y makes and reports it ----
build past-eof-l2-entry lost.qcow2 || fail "build lost"
qcowkit repair -p --no-undo lost.qcow2 > out 2>&1
is "$?" 4 "repair -p leaves a fix that loses guest data: exit 4"
grep -q "it can lose guest data" out
is "$?" 0 "and says why"
is "$(qcorr lost.qcow2)" 1 "and the entry past the end of the file stays (qemu-img check: 1 corruption)"
qcowkit repair -y --no-undo --output=json lost.qcow2 > lost.json 2>/dev/null
is "$?" 1 "repair -y clears the entry: exit 1"
is "$(jq -r '.lost | length' lost.json)" 1 "the JSON report lists the lost range"
is "$(jq -r '.lost[0]."guest-offset"' lost.json)" 65536 "at guest offset 64 KiB (L2 entry 1)"
is "$(jq -r '.lost[0].length' lost.json)" 65536 "one cluster long"
is "$(jq -r '[.fixes[] | select(.name == "CLEAR_BAD_ENTRIES")][0]."loses-data"' lost.json)" true \
  "the fix is marked as losing data"
is "$(qemu-img check lost.qcow2 >/dev/null 2>&1; echo $?)" 0 "qemu-img check finds it clean"

# ---- a cleared entry of a shared L2 table: lost wherever it is mapped ----
# 4 KiB clusters (an L2 table maps 2 MiB); snapshot s1 shares the L2
# table, and active L1[1] is pointed at it too: its entry 1, pointed past
# the end of the file, held guest 4 KiB and 2 MiB + 4 KiB of the active
# image and 4 KiB of s1 (fuzz-repair found one range of three reported:
# tests/regress/repair-shared-l2-lost-ranges.gz).
rm -rf "$T/b" && mkdir -p "$T/b" &&
(cd "$T/b" && IMG=$T/b/x.qcow2 SIZE=8M bash -ec '. "$1"
   mkimg -o cluster_size=4096; wr 0 8k
   qemu-img snapshot -c s1 "$IMG"
   set_l1e 1 "$(l1e 0)"; set_l2e 0 1 $(( 0x10000000 | COPIED ))' s \
   "$srcdir/tests/check/functions.sh") >/dev/null 2>&1 &&
cp "$T/b/x.qcow2" shared.qcow2 || fail "build shared"
qcowkit repair -y --no-undo --output=json shared.qcow2 > shared.json 2>/dev/null
is "$?" 1 "repair -y clears the entry of the shared L2 table: exit 1"
is "$(jq -c '[.lost[] | [.snapshot // -1, ."guest-offset", .length]]' shared.json)" \
  "[[-1,4096,4096],[-1,2101248,4096],[0,4096,4096]]" \
  "lost: the cluster at both active L1 entries that map the table, and in the snapshot"
is "$(qemu-img check shared.qcow2 >/dev/null 2>&1; echo $?)" 0 "qemu-img check finds it clean"

# ---- an encryption header pointer in an image that is not encrypted ----
# QEMU refuses the image and does not count the pointer's range; neither
# does the check (HDR_FEATURE_DEPENDENCY). Here it points at 512 MiB from
# 1 MiB, past the end of the file, and the refcount table has lost its
# block. The repair rebuilds the refcounts in fresh clusters at the end of
# the file. Counted as a dangling reference, the pointer had the repair
# write them past its range (fresh clusters go past what dangling entries
# point at): the file grew to 513 MiB and its 8,192 clusters of holes
# became an encryption header (fuzz-repair: such inputs grew 64 KiB files
# to 1 GiB and took most of its time).
rm -rf "$T/b" && mkdir -p "$T/b" &&
(cd "$T/b" && IMG=$T/b/x.qcow2 SIZE=64M bash -ec '. "$1"
   mkimg; wr 0 64k
   hl=$(( $(peek32 100) ))
   rest=$(od -An -tx1 -v -j "$hl" -N 1024 "$IMG" | tr -d " \n")
   pokehex "$hl" "$(be 4 0x0537be77)$(be 4 16)$(be 8 0x100000)$(be 8 0x20000000)$rest"
   set_rte 0 0' s "$srcdir/tests/check/functions.sh") >/dev/null 2>&1 &&
cp "$T/b/x.qcow2" crypto.qcow2 || fail "build crypto"
qcowkit repair -y --no-undo crypto.qcow2 > out 2>&1
is "$?" 4 "repair -y of an image with an encryption header pointer but no encryption: exit 4 (a problem remains)"
grep -q "Rebuilt the refcount table and blocks in fresh clusters" out
is "$?" 0 "it rebuilds the refcount structure"
size=$(stat -c %s crypto.qcow2)
if [ "$size" -le 1048576 ]; then
  pass "the file stays below the pointer's range ($size bytes)"
else
  fail "the file stays below the pointer's range" "$size bytes"
fi
is "$(qcowkit check --output=json crypto.qcow2 | jq -c '[[.problems[].code], .corruptions, .leaks // 0]')" \
  '[["0x00000d"],1,0]' "what remains is the contradiction of the header (the user decides)"
cp crypto.qcow2 crypto2.qcow2
qcowkit repair -y --no-undo crypto2.qcow2 > /dev/null 2>&1
is "$(sha crypto2.qcow2)" "$(sha crypto.qcow2)" "a second repair changes nothing"
qemu-img check crypto.qcow2 > out 2>&1
is "$?" 1 "qemu-img still refuses it: exit 1"
grep -q "CRYPTO header extension only expected with LUKS encryption method" out
is "$?" 0 "for the same reason"

# ---- a snapshot's L1 table in a snapshot table that cannot be read ----
# The snapshot table's second entry lies past the end of the file, so the
# check reads no snapshot (as qemu-img) and counts none of their tables.
# The first entry's L1 table is the active image's guest data at 0, whose
# bytes (0x01) read as L1 entries pointing outside the image. The header
# cluster is also an L2 table (an active L1 entry of offset 0 with a
# reserved bit), so the table cannot be rewritten without the bad entry.
# The repair cleared the snapshot's L1 entries, which it read from the
# entry it could parse: 16 bytes of the guest's data (fuzz-repair,
# tests/regress/repair-unread-snapshot-l1-is-data.gz).
rm -rf "$T/b" && mkdir -p "$T/b" &&
(cd "$T/b" && IMG=$T/b/x.qcow2 SIZE=1G bash -ec '. "$1"
   mkimg; wr 0 64k
   qemu-img snapshot -c s1 "$IMG"
   d=$(( $(l2e 0 0) & 0x00fffffffffffe00 ))
   e=$(sn_entry 0)
   poke64 "$e" "$d"; poke32 60 2; truncate_to $(( e + 80 ))
   set_l1e 1 0x0100000000000000
   echo "$d" > dataoff' s "$srcdir/tests/check/functions.sh") >/dev/null 2>&1 &&
cp "$T/b/x.qcow2" unread.qcow2 || fail "build unread"
d=$(cat "$T/b/dataoff" 2>/dev/null)
qcowkit check unread.qcow2 > out 2>&1
grep -q "FAILED 0x020002: failed to read the snapshot table" out
is "$?" 0 "the snapshot table cannot be read (SN_TABLE_UNREADABLE)"
qcowkit repair -y --no-undo unread.qcow2 > out 2>&1
is "$?" 4 "repair -y of it: exit 4 (problems remain)"
cmp -s <(tail -c +$(( ${d:-0} + 1 )) "$T/b/x.qcow2" | head -c 65536) \
       <(tail -c +$(( ${d:-0} + 1 )) unread.qcow2 | head -c 65536)
is "$?" 0 "the guest data where the snapshot's L1 table lies is unchanged"
grep -q "of snapshot 0: its L1 entry" out
is "$?" 1 "and no snapshot L1 entry is cleared (nor reported lost)"
cp unread.qcow2 unread2.qcow2
qcowkit repair -y --no-undo unread2.qcow2 > /dev/null 2>&1
is "$(sha unread2.qcow2)" "$(sha unread.qcow2)" "a second repair changes nothing"

# ---- compressed data under an L2 table, its bitmap bits set ----
# A compressed cluster whose extended L2 entry has subcluster bits set
# (a corruption: qemu-img stops at the entry and calls the data leaked)
# is still read by QEMU (qemu-io reads it back) and by us; an L1 entry
# names its cluster as an L2 table too. The check counted nothing for the
# compressed data, so it saw no conflict there, and the repair cleared
# an "entry" of that L2 table: the guest data at 0 no longer read
# (fuzz-repair, tests/regress/repair-compressed-bitmap-under-l2-table.gz).
rm -rf "$T/b" && mkdir -p "$T/b" &&
(cd "$T/b" && IMG=$T/b/x.qcow2 SIZE=1G bash -ec '. "$1"
   mkimg -o extended_l2=on; wrc 0 64k 1
   set_l2bm 0 0 0x1
   e=$(l2e 0 0)
   set_l1e 1 $(( e & ((1 << 54) - 1) & ~0xffff ))' s "$srcdir/tests/check/functions.sh") >/dev/null 2>&1 &&
cp "$T/b/x.qcow2" cbm.qcow2 || fail "build cbm"
qemu-io -f qcow2 -c "read -P 1 0 64k" cbm.qcow2 > out 2>&1
grep -q "Pattern verification failed\|read failed" out
is "$?" 1 "qemu-io reads the compressed cluster despite its bitmap bits"
qcowkit check cbm.qcow2 > out 2>&1
grep -q "0x040002" out
is "$?" 1 "the check does not call the compressed data leaked"
grep -q "Warning 0x01000d: the L2 table for active L1\[1\] overlaps guest data at 0x0" out
is "$?" 0 "it reports the L2 table over the guest data (METADATA_OVERLAP)"
qcowkit repair -y --no-undo cbm.qcow2 > out 2>&1
is "$?" 4 "repair -y of it: exit 4 (the corruptions stay)"
qemu-io -f qcow2 -c "read -P 1 0 64k" cbm.qcow2 > out 2>&1
grep -q "Pattern verification failed\|read failed" out
is "$?" 1 "the guest data at 0 reads the same after the repair (qemu-io)"
cp cbm.qcow2 cbm2.qcow2
qcowkit repair -y --no-undo cbm2.qcow2 > /dev/null 2>&1
is "$(sha cbm2.qcow2)" "$(sha cbm.qcow2)" "a second repair changes nothing"

# ---- a cluster mapped twice gets its own copy ----
build refcount-low-duplicate-l2-entry dup.qcow2 || fail "build dup"
qcowkit repair -y --no-undo dup.qcow2 > out 2>&1
is "$?" 1 "repair -y copies a cluster two guest offsets shared: exit 1"
grep -q "Gave 1 guest clusters their own copy" out
is "$?" 0 "and says so"
qemu-io -f qcow2 -c 'write -P 7 0 64k' dup.qcow2 > /dev/null 2>&1
out=$(qemu-io -f qcow2 -c 'read -P 1 64k 64k' dup.qcow2 2>&1)
if grep -q "Pattern verification failed" <<< "$out"; then
  fail "after the repair, a write at guest 0 leaves guest 64 KiB as it was" "$out"
else
  pass "after the repair, a write at guest 0 leaves guest 64 KiB as it was (qemu-io)"
fi
is "$(qemu-img check dup.qcow2 > /dev/null 2>&1; echo $?)" 0 "and qemu-img check finds it clean"

# ---- questions on a terminal ----
if have script "repair's questions on a terminal (script from util-linux)"; then
  for a in n y q; do
    build leak-l2-entry-cleared t$a.qcow2
    printf '%s\n' "$a" | script -qec "qcowkit repair --no-undo t$a.qcow2" /dev/null > t$a.out 2>&1
    echo "$?" > t$a.rc
  done
  grep -q "Free 1 leaked clusters? \[y/n/a/q\]" tn.out
  is "$?" 0 "on a terminal repair asks once per fix"
  is "$(qemu-img check tn.qcow2 >/dev/null 2>&1; echo $?)" 3 "answered n: the leak stays"
  is "$(qemu-img check ty.qcow2 >/dev/null 2>&1; echo $?)" 0 "answered y: fixed"
  is "$(cat tq.rc)" 32 "answered q: stopped, exit 32"
  is "$(qemu-img check tq.qcow2 >/dev/null 2>&1; echo $?)" 3 "answered q: nothing fixed"
fi

# ---- QEMU's locks ----
build leak-l2-entry-cleared busy.qcow2
ok "qemu-io holds busy.qcow2 open (qemu-img info refuses it for the lock)" start_holder busy.qcow2
s0=$(stamp busy.qcow2)
qcowkit repair -y --no-undo busy.qcow2 > out 2>&1
is "$?" 8 "repair refuses an image QEMU has open: exit 8"
grep -q "in use" out
is "$?" 0 "and says it is in use"
qcowkit check -r all busy.qcow2 > out 2>&1
is "$?" 1 "check -r refuses it too: exit 1"
is "$(stamp busy.qcow2)" "$s0" "the image in use was not written"
stop_holder

# And QEMU sees ours: a repair waiting at its first question holds the
# image as a writer. The locks are the bytes qemu-img's own writer takes
# (/proc/locks: 100-101 consistent read and write, 103 resize, 201 and
# 203 not shared), taken in runs of neighbours rather than a byte a call.
if have script "repair's locks seen by qemu-img (script from util-linux)"; then
  build leak-l2-entry-cleared held.qcow2
  mkfifo held.in
  script -qec "qcowkit repair --no-undo held.qcow2" /dev/null < held.in > held.out 2>&1 &
  held_pid=$!
  kill_on_exit "$held_pid"
  exec {held_fd}<> held.in
  wait_for 60 eval "! proc_alive $held_pid || grep -q 'y/n/a/q' held.out"
  ok "a repair waits at its first question" grep -q 'y/n/a/q' held.out
  ok "qemu-img info refuses the image the repair holds (\"write\" lock)" \
    qemu_lock_held held.qcow2
  ok "qemu-img info -U (force share) still reads it" \
    eval 'qemu-img info -U held.qcow2 > /dev/null 2>&1'
  read -r d ino < <(stat -c '%d %i' held.qcow2)
  dev=$(printf '%02x:%02x:%s' $(((d >> 8) & 0xfff)) $(((d & 0xff) | ((d >> 12) & 0xfff00))) "$ino")
  is "$(awk -v dev="$dev" '$2 == "OFDLCK" && $4 == "READ" && $(NF - 2) == dev {
          print $(NF - 1) "-" $NF }' /proc/locks | sort -n | tr '\n' ' ')" \
     "100-101 103-103 201-201 203-203 " "the repair holds QEMU's writer bytes (/proc/locks)"
  qcowkit repair -y --no-undo held.qcow2 > out 2>&1
  is "$?" 8 "a second repair of it refuses: exit 8"
  ok "... naming the holder" grep -qE 'in use by (lt-)?qcowkit \(pid' out
  printf 'q\n' >&"$held_fd"
  exec {held_fd}>&-
  stop_process "$held_pid" 30
  is "$(qemu-img check held.qcow2 >/dev/null 2>&1; echo $?)" 3 "answered q: the leak stays"
fi

# ---- clean images are never written ----
# Every image of the fuzz corpus (every feature combination qcowkit can
# make: v2/v3, cluster sizes, refcount widths, extended L2, compression,
# snapshots, bitmaps, backing and data files) is clean; repair -y changes
# none of them, except the one left dirty on purpose (lazy refcounts), of
# which it clears the dirty bit and nothing else.
mkdir -p fc
qcowkit fuzz-corpus fc > /dev/null 2>&1 || fail "fuzz-corpus runs"
changed= n=0
for f in fc/*.qcow2; do
  s=$(sha "$f")
  qcowkit repair -y --no-undo "$f" > fc.out 2>&1
  rc=$?
  n=$((n + 1))
  if [ "$(sha "$f")" != "$s" ]; then changed="$changed $(basename "$f"):$rc"; fi
done
is "$changed" " v3-c4k-rc16-lazy-dirty.qcow2:1" \
  "repair -y on the $n fuzz corpus images writes only the lazy-dirty one's dirty bit"
is "$(qemu-img info --output=json fc/v3-c4k-rc16-lazy-dirty.qcow2 | jq '."dirty-flag"')" false \
  "whose dirty bit is then clear (qemu-img info)"

# ---- persistent bitmaps left in use: --bitmaps=keep (default) and drop ----
# QEMU refuses a bitmap left in use ("inconsistent and cannot be used").
# keep: the bitmap is marked fully dirty (every table entry all ones) and
# its in-use flag cleared, so QEMU accepts it again; drop: removed, as
# qemu-img bitmap --remove would, the extension with the last one.
bmimg () {   # bmimg FILE [BACKING]: two bitmaps b0 b1 over written data
  rm -f "$1"
  if [ -n "${2:-}" ]; then
    qemu-img create -q -f qcow2 -b "$2" -F qcow2 "$1" 64M
  else
    qemu-img create -q -f qcow2 "$1" 64M
  fi
  qemu-io -f qcow2 -c "write -P 7 0 1M" "$1" > /dev/null &&
  qemu-img bitmap --add "$1" b0 && qemu-img bitmap --add "$1" b1 &&
  qemu-io -f qcow2 -c "write -P 8 64k 128k" "$1" > /dev/null
}
in_use () {  # in_use FILE INDEX: set the in-use flag of bitmap INDEX
  IMG=$1 bash -c '. "$1"; e=$(bm_dir_off); [ "$2" = 1 ] && e=$(bm2_entry)
                  poke32 $(( e + 12 )) $(( $(peek32 $(( e + 12 ))) | 1 ))' \
    _ "$srcdir/tests/check/functions.sh" "$2"
}
bm_ok () {   # bm_ok FILE NAME: QEMU uses the bitmap (refuses inconsistent ones)
  cp "$1" bmq.qcow2 && qemu-img bitmap --disable bmq.qcow2 "$2" 2>/dev/null
}
bmimg bm.qcow2 && in_use bm.qcow2 0 && cp bm.qcow2 bm0.qcow2 ||
  fail "bitmaps: build"
cp bm.qcow2 bmq.qcow2
qemu-img bitmap --disable bmq.qcow2 b0 > out 2>&1
is "$? $(grep -c 'inconsistent and cannot be used' out)" "1 1" \
  "bitmaps: QEMU refuses the bitmap left in use (inconsistent)"
qcowkit repair -y --no-undo bm.qcow2 > out 2>&1
is "$?" 1 "bitmaps keep: repair -y exits 1 (fixed)"
ok "bitmaps keep: the fix is BITMAPS_FULL" grep -q "Marked 1 persistent bitmaps left in use as fully dirty" out
ok "bitmaps keep: QEMU uses the bitmap again" bm_ok bm.qcow2 b0
ok "bitmaps keep: the other bitmap is untouched and usable" bm_ok bm.qcow2 b1
t0=$(IMG=bm.qcow2 bash -c '. "$1"; bm_table_off' _ "$srcdir/tests/check/functions.sh")
is "$(od -An -tx1 -v -j $(( t0 )) -N 8 bm.qcow2 | tr -d ' \n')" 0000000000000001 \
  "bitmaps keep: the table entry is all ones (offset 0, bit 0)"
is "$(qemu-img info --output=json bm.qcow2 | jq -c '[.["format-specific"].data.bitmaps[] | [.name, .flags]]')" \
  '[["b0",["auto"]],["b1",["auto"]]]' "bitmaps keep: qemu-img info lists both, none in use"
is "$(qemu-img check bm.qcow2 > /dev/null 2>&1; echo $?)" 0 "bitmaps keep: qemu-img check is clean"
is "$(qcowkit check bm.qcow2 > out 2>&1; echo $?) $(grep -c 0x0600 out)" "0 0" "bitmaps keep: qcowkit check is clean, no bitmap warning"
ok "bitmaps keep: guest data unchanged" qemu-img compare -q bm0.qcow2 bm.qcow2
s1=$(sha bm.qcow2)
qcowkit repair -y --no-undo bm.qcow2 > /dev/null 2>&1
is "$(sha bm.qcow2)" "$s1" "bitmaps keep: a second repair changes nothing"
cp bm0.qcow2 bm.qcow2
qcowkit repair -p --no-undo bm.qcow2 > /dev/null 2>&1
ok "bitmaps keep: preen makes it (no guest data at stake)" bm_ok bm.qcow2 b0

cp bm0.qcow2 bm.qcow2
qcowkit repair -y --no-undo --bitmaps=drop bm.qcow2 > out 2>&1
is "$?" 1 "bitmaps drop: repair -y --bitmaps=drop exits 1 (fixed)"
is "$(qemu-img info --output=json bm.qcow2 | jq -c '[.["format-specific"].data.bitmaps[].name]')" \
  '["b1"]' "bitmaps drop: qemu-img info lists only the other bitmap"
ok "bitmaps drop: the other bitmap is usable" bm_ok bm.qcow2 b1
is "$(qemu-img check bm.qcow2 > /dev/null 2>&1; echo $?)" 0 "bitmaps drop: qemu-img check is clean (the dropped bitmap's clusters freed)"
ok "bitmaps drop: guest data unchanged" qemu-img compare -q bm0.qcow2 bm.qcow2
s1=$(sha bm.qcow2)
qcowkit repair -y --no-undo --bitmaps=drop bm.qcow2 > /dev/null 2>&1
is "$(sha bm.qcow2)" "$s1" "bitmaps drop: a second repair changes nothing"

# the last bitmap dropped: the header is written again without the
# extension, the autoclear bit clear, the backing file name kept
qemu-img create -q -f qcow2 bmbase.qcow2 64M &&
  qemu-io -f qcow2 -c "write -P 9 0 4M" bmbase.qcow2 > /dev/null &&
  bmimg bmo.qcow2 bmbase.qcow2 && in_use bmo.qcow2 0 && in_use bmo.qcow2 1 &&
  cp bmo.qcow2 bmo0.qcow2 || fail "bitmaps: build the overlay"
qcowkit repair -y --undo bmo.undo --bitmaps=drop bmo.qcow2 > out 2>&1
is "$?" 1 "bitmaps drop all: exits 1 (fixed)"
is "$(qemu-img info --output=json bmo.qcow2 | jq -c '[.["backing-filename"], .["format-specific"].data.bitmaps]')" \
  '["bmbase.qcow2",null]' "bitmaps drop all: no bitmap left, the backing file kept"
is "$(( $(od -An -tx1 -j 95 -N 1 bmo.qcow2) & 1 ))" 0 "bitmaps drop all: the bitmaps autoclear bit is clear"
is "$(qemu-img check bmo.qcow2 > /dev/null 2>&1; echo $?)" 0 "bitmaps drop all: qemu-img check is clean"
is "$(qcowkit check bmo.qcow2 > /dev/null 2>&1; echo $?)" 0 "bitmaps drop all: qcowkit check is clean"
ok "bitmaps drop all: guest data (through the backing file) unchanged" \
  qemu-img compare -q bmo0.qcow2 bmo.qcow2
qcowkit undo bmo.undo bmo.qcow2 > /dev/null 2>&1
is "$(sha bmo.qcow2)" "$(sha bmo0.qcow2)" "bitmaps drop all: undo puts the header back byte for byte"
qcowkit repair -y --bitmaps=maybe --no-undo bmo.qcow2 > /dev/null 2>&1
is "$?" 16 "bitmaps: --bitmaps=maybe is a usage error"

# ---- the fault sweep ----
# Cases: leaks in place; a refcount structure rebuilt past the end of the
# file and switched to by the header; entries cleared and COPIED flags;
# the dirty and corrupt bits; bitmaps left in use, kept and dropped (CASE:ARG
# runs the repair with --ARG).
repair_run () {  # FAULT [ARG]: on a fresh copy img.qcow2 of orig.qcow2
  rm -f img.qcow2 j.undo
  cp orig.qcow2 img.qcow2
  QCOWKIT_FAULT=$1 qcowkit repair -y --undo j.undo $2 img.qcow2 > f.out 2>&1
}
# a run that did not reach its fault point is the whole repair
repair_done () { [ "$(sha img.qcow2)" = "$clean_sha" ]; }
repair_verify () {  # FAULT [ARG]
  local c2
  # (a) no worse than before
  c2=$($corr img.qcow2)
  [ -n "$c2" ] && [ "$c2" -le "${oc:-0}" ] || sweep_bad "corruptions=$c2>$oc"
  # (c) a rerun finishes
  cp img.qcow2 rerun.qcow2
  qcowkit repair -y --no-undo $2 rerun.qcow2 > /dev/null 2>&1
  [ "$(qemu-img check rerun.qcow2 >/dev/null 2>&1; echo $?)" = 0 ] ||
    sweep_bad rerun-not-clean
  # (b) undo restores the original
  sweep_undone j.undo img.qcow2 "$osha"
}
for cc in bitmap-in-use bitmap-in-use:bitmaps=drop leak-orphans-appended reftable-entry-zeroed refblock-outside-image \
         l2-reserved-bits copied-l2-clear dirty-and-corrupt-bits \
         refcount-low-duplicate-l2-entry sn-extra-size-field \
         sn-extra-incomplete sn-many-empty-entries sn-table-past-eof; do
  c=${cc%%:*} arg=
  [ "$c" = "$cc" ] || arg=--${cc#*:}
  build "$c" orig.qcow2 || { fail "$c: build"; continue; }
  osha=$(sha orig.qcow2)
  # "worse" is qemu-img check's count of corruptions; where qemu-img cannot
  # check the original at all, qcowkit check's
  corr=qcorr
  oc=$(qcorr orig.qcow2)
  if [ -z "$oc" ]; then
    corr=kcorr
    oc=$(kcorr orig.qcow2)
  fi
  # the whole repair: its result and exit status
  cp orig.qcow2 full.qcow2
  qcowkit repair -y --no-undo $arg full.qcow2 > /dev/null 2>&1
  clean_rc=$?
  clean_sha=$(sha full.qcow2)
  SWEEP_FAILED_RC=8 SWEEP_DONE_RC=$clean_rc fault_sweep "$cc" \
    "never worse ($corr), undo restores, a rerun finishes" \
    40 repair_run repair_verify repair_done $arg
done
done_testing
