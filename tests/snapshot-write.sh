#!/bin/bash
# qcowkit snapshot delete / apply against qemu-img snapshot -d / -a.
# Images made by qemu-img and qemu-io: version 3 with 64 KiB clusters
# (data, compressed, zero and preallocated zero clusters, three
# snapshots sharing clusters, one named with a '/'), version 2 with 4 KiB
# clusters, extended L2 entries, snapshots of other virtual sizes (grown,
# shrunk), a persistent bitmap. Every snapshot of each deleted and applied
# by both tools on copies; then: qemu-img check clean on ours, the
# snapshot lists equal, the virtual size equal, guest data equal in the
# active state and in every remaining snapshot. Then the fault sweep of a
# delete and of an apply (killed or failed at every write and flush:
# qemu-img check finds leaks and missing COPIED flags at worst, the guest
# reads the state before or after, qcowkit repair -y makes it clean, the
# journal puts back the original bytes), QEMU's locks, a dry run, JSON,
# and bad input.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch
cd "$T" || exit 1

# (one process: sha256sum's " -" is cut by the shell)
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
qcheck () { qemu-img check "$1" > /dev/null 2>&1; echo $?; }
qio () { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
         qemu-io -f qcow2 "${a[@]}" "$f" > /dev/null; }
names () { qemu-img info --output=json "$1" | jq -r '(.snapshots // [])[].name'; }
# what qemu-img says of IMG's snapshots and size, in one line
state () { qemu-img info --output=json "$1" | jq -c '[.["virtual-size"], .snapshots]'; }
# the guest data of each snapshot of fixture IMG, once: fxv/IMG/NAME
# (names made file-safe)
fx_views () {  # IMG
  local n
  mkdir -p "fxv/$1"
  while IFS= read -r n; do
    qemu-img convert -l "snapshot.name=$n" -O raw "fx/$1" "fxv/$1/${n//\//_}"
  done < <(names "fx/$1")
}
# every snapshot IMG has reads as it did in fixture FX (neither tool changes
# what a remaining snapshot reads); qemu-img convert -l reads a snapshot at
# the image's current size, so when the size changed, as in REF instead
snaps_unchanged () {  # FX IMG REF
  local n want resized=no
  [ "$(vsize "$2")" = "$(vsize "fx/$1")" ] || resized=yes
  while IFS= read -r n; do
    want=fxv/$1/${n//\//_}
    if [ $resized = yes ]; then
      qemu-img convert -l "snapshot.name=$n" -O raw "$3" sr.raw; want=sr.raw
    fi
    qemu-img convert -l "snapshot.name=$n" -O raw "$2" sv.raw &&
      cmp -s sv.raw "$want" || return 1
  done < <(names "$2")
}
vsize () { qemu-img info --output=json "$1" | jq -r '.["virtual-size"]'; }

# ---- fixtures, each IMG in fx/ ----
mkdir fx
mk_v3 () {
  qemu-img create -q -f qcow2 fx/v3.qcow2 4M
  qio fx/v3.qcow2 'write -P 1 0 1M' 'write -c -P 5 2M 128k' 'write -z 3M 64k'
  qemu-img snapshot -c s1 fx/v3.qcow2
  qio fx/v3.qcow2 'write -P 2 512k 512k' 'write -z -u 0 64k'
  qemu-img snapshot -c s2 fx/v3.qcow2
  qio fx/v3.qcow2 'write -P 3 64k 64k' 'write -c -P 6 3M 64k'
  qemu-img snapshot -c 'a/b' fx/v3.qcow2
  qio fx/v3.qcow2 'write -P 4 1M 192k' 'write -z 2M 64k'
}
mk_v2 () {
  qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 fx/v2.qcow2 2M
  qio fx/v2.qcow2 'write -P 1 0 256k' 'write -c -P 2 1M 16k'
  qemu-img snapshot -c s1 fx/v2.qcow2
  qio fx/v2.qcow2 'write -P 3 8k 12k' 'write -z 1M 4k'
  qemu-img snapshot -c s2 fx/v2.qcow2
  qio fx/v2.qcow2 'write -P 4 100k 4k'
}
mk_extl2 () {
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 fx/x.qcow2 4M
  qio fx/x.qcow2 'write -P 1 0 200k' 'write -P 2 1M 4k'
  qemu-img snapshot -c s1 fx/x.qcow2
  qio fx/x.qcow2 'write -P 3 2k 2k' 'write -z 64k 8k' 'write -P 5 3M 6k'
  qemu-img snapshot -c s2 fx/x.qcow2
  qio fx/x.qcow2 'write -z 1M 2k'
}
mk_size () {   # 4 KiB clusters (an L2 table covers 2 MiB): 1 MiB, 8 MiB, shrunk to 3 MiB
  qemu-img create -q -f qcow2 -o cluster_size=4096 fx/size.qcow2 1M
  qio fx/size.qcow2 'write -P 1 0 64k'
  qemu-img snapshot -c small fx/size.qcow2
  qemu-img resize -q fx/size.qcow2 8M
  qio fx/size.qcow2 'write -P 2 6M 64k'
  qemu-img snapshot -c big fx/size.qcow2
  qemu-img resize -q --shrink fx/size.qcow2 3M
  qio fx/size.qcow2 'write -P 3 2M 8k'
}
mk_bitmap () {
  qemu-img create -q -f qcow2 fx/bm.qcow2 2M
  qio fx/bm.qcow2 'write -P 1 0 128k'
  qemu-img bitmap --add fx/bm.qcow2 b0
  qemu-img snapshot -c s1 fx/bm.qcow2
  qio fx/bm.qcow2 'write -P 2 64k 128k'
  qemu-img snapshot -c s2 fx/bm.qcow2
}
mk_v3; mk_v2; mk_extl2; mk_size; mk_bitmap
for f in v3 v2 x size bm; do fx_views $f.qcow2; done

# ---- the oracle: every snapshot, both operations ----
# op_case IMG OP SNAP [QSNAP]: qemu-img on q.qcow2 (given QSNAP when
# not empty), qcowkit on k.qcow2 (given SNAP)
op_case () {
  local img=$1 op=$2 sn=$3 bad= qrc krc
  cp "fx/$img" q.qcow2; cp "fx/$img" k.qcow2
  qemu-img snapshot "-${op:0:1}" "${4:-$sn}" q.qcow2 > q.out 2>&1; qrc=$?
  qcowkit snapshot "$op" k.qcow2 "$sn" > k.out 2>&1; krc=$?
  if [ "$qrc" != 0 ]; then
    is "$krc:$(sha k.qcow2)" "1:$(sha "fx/$img")" \
       "$img $op $sn: refused as qemu-img refuses it ($(head -c 80 q.out)), nothing written"
    return
  fi
  [ "$krc" = 0 ] || bad="$bad rc=$krc($(head -c 200 k.out))"
  qemu-img check k.qcow2 > k.check 2>&1 || bad="$bad check($(head -c 200 k.check))"
  [ "$(state q.qcow2)" = "$(state k.qcow2)" ] || bad="$bad snapshots-or-size"
  qemu-img compare -q q.qcow2 k.qcow2 || bad="$bad active-data"
  snaps_unchanged "$img" k.qcow2 q.qcow2 || bad="$bad snapshot-data"
  is "$bad" "" "$img $op $sn: as qemu-img: check clean, same snapshots, size, active data; snapshots read as before"
}
for img in v3.qcow2 v2.qcow2 x.qcow2 size.qcow2 bm.qcow2; do
  while IFS= read -r sn; do
    op_case "$img" delete "$sn"
    op_case "$img" apply "$sn"
  done < <(names "fx/$img")
done
# by ID, and a name that is another snapshot's ID: delete looks up names
# first (qemu-img only names), apply IDs first (as qemu-img)
qemu-img create -q -f qcow2 fx/ids.qcow2 1M
qio fx/ids.qcow2 'write -P 1 0 64k'; qemu-img snapshot -c a fx/ids.qcow2
qio fx/ids.qcow2 'write -P 2 0 64k'; qemu-img snapshot -c 1 fx/ids.qcow2
qio fx/ids.qcow2 'write -P 3 0 64k'
fx_views ids.qcow2
op_case ids.qcow2 delete 1
op_case ids.qcow2 apply 1
op_case ids.qcow2 delete 2 1   # ID 2 is named "1"; qemu-img finds no name "2"
op_case ids.qcow2 apply 2

# ---- fault sweep ----
# after a fault: qemu-img check finds leaks, or OFLAG_COPIED errors of
# entries with refcount 1 and no flag (QEMU's order leaves them too), and
# nothing else
only_benign () {  # IMG
  local out
  out=$(qemu-img check "$1" 2>&1)
  case $? in 0|3) return 0 ;; 2) ;; *) return 1 ;; esac
  ! echo "$out" | grep '^ERROR' | grep -qv 'OFLAG_COPIED.*refcount=1$'
}
sw_run () {  # FAULT OP SNAP
  rm -rf f && mkdir f && cp fx/v3.qcow2 f/i.qcow2
  (cd f && QCOWKIT_FAULT=$1 exec qcowkit snapshot "$2" --undo j i.qcow2 "$3") \
    > f.out 2>&1
}
sw_verify () {  # FAULT OP SNAP
  only_benign f/i.qcow2 || sweep_bad "check-$(qcheck f/i.qcow2)"
  { [ "$(state f/i.qcow2)" = "$(cat before.state)" ] &&
      qemu-img compare -q before.raw f/i.qcow2; } ||
    { [ "$(state f/i.qcow2)" = "$(cat after.state)" ] &&
      qemu-img compare -q after.raw f/i.qcow2; } || sweep_bad guest-data
  rm -f r.qcow2*; cp f/i.qcow2 r.qcow2
  qcowkit repair -y r.qcow2 > /dev/null 2>&1
  [ "$(qcheck r.qcow2)" = 0 ] || sweep_bad repair-not-clean
  sweep_undone f/j f/i.qcow2 "$(sha fx/v3.qcow2)"
}
sweep () {  # OP SNAP
  qemu-img convert -O raw fx/v3.qcow2 before.raw; state fx/v3.qcow2 > before.state
  cp fx/v3.qcow2 a.qcow2; qemu-img snapshot "-${1:0:1}" "$2" a.qcow2
  qemu-img convert -O raw a.qcow2 after.raw; state a.qcow2 > after.state
  fault_sweep "$1 $2" "leaks and missing COPIED flags at worst, before or after to the guest (snapshots, size, active data), repair makes it clean, undo restores" \
    40 sw_run sw_verify : "$@"
}
sweep delete s2
sweep apply s1

# ---- undo, dry run, JSON ----
cp fx/v3.qcow2 u.qcow2
qcowkit snapshot delete --undo u.j u.qcow2 s1 > /dev/null 2>&1
qcowkit undo u.j u.qcow2 > /dev/null 2>&1
is "$(sha u.qcow2)" "$(sha fx/v3.qcow2)" "qcowkit undo puts a deleted snapshot back byte for byte"
out=$(qcowkit snapshot apply -n --output=json u.qcow2 s2)
is "$?:$(sha u.qcow2)" "0:$(sha fx/v3.qcow2)" "apply -n: exit 0, nothing written"
is "$(echo "$out" | jq -c '[.operation, .id, .name, .["dry-run"], .changed]')" \
   '["apply","2","s2",true,false]' "  JSON names the snapshot found"
out=$(qcowkit snapshot delete --output=json u.qcow2 'a/b')
is "$(echo "$out" | jq -c '[.id, .name, .changed, (.["clusters-freed"] > 0)]')" \
   '["3","a/b",true,true]' "delete --output=json: the snapshot named a/b (a name, not a path), clusters freed"
is "$(qcheck u.qcow2)" 0 "  and the image checks clean"

# ---- locks ----
cp fx/v3.qcow2 busy.qcow2
ok "qemu-io holds busy.qcow2 open" start_holder busy.qcow2
s0=$(sha busy.qcow2)
qcowkit snapshot delete busy.qcow2 s1 > out 2>&1
is "$?" 1 "delete refuses an image QEMU has open: exit 1"
grep -q "in use" out
is "$?:$(sha busy.qcow2)" "0:$s0" "  says it is in use, nothing written"
qcowkit snapshot apply busy.qcow2 s1 > /dev/null 2>&1
is "$?:$(sha busy.qcow2)" "1:$s0" "apply too"
stop_holder

# ---- bad input ----
cp fx/v3.qcow2 e.qcow2
qcowkit snapshot delete e.qcow2 nosuch > out 2>&1
is "$?" 1 "an unknown snapshot: exit 1"
grep -q "Could not delete snapshot 'nosuch': snapshot not found" out
is "$?:$(sha e.qcow2)" "0:$(sha fx/v3.qcow2)" "  qemu-img's message, nothing written"
qcowkit snapshot apply e.qcow2 4 > out 2>&1
is "$?" 1 "apply of an unknown ID: exit 1"
qcowkit snapshot delete e.qcow2 > /dev/null 2>&1
is "$?" 2 "no snapshot name: usage, exit 2"
qcowkit snapshot apply --bogus e.qcow2 s1 > /dev/null 2>&1
is "$?" 2 "an unknown option: exit 2"
head -c 200000 fx/v3.qcow2 > t.qcow2
qcowkit snapshot delete t.qcow2 s1 > out 2>&1
is "$?" 1 "a truncated image: exit 1, $(head -c 100 out | tr '\n' ' ')"
is "$(sha e.qcow2)" "$(sha fx/v3.qcow2)" "no refusal wrote anything"

done_testing
