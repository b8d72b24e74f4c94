#!/bin/bash
# qcowkit meta delete against a real libvirt (embedded QEMU driver) and
# qemu-img. libvirt makes an internal snapshot s1, then two external
# disk-only snapshots e1 and e2, with guest writes between them. Offline,
# libvirt 9.0 cannot delete e1 (asked here too); qcowkit merges the
# overlay into the image it froze and updates the metadata. Each case
# asks:
#   - libvirt: a fresh embedded libvirt loads the result; its tree,
#     parents, current snapshot, the remaining snapshots' disk sources
#     (snapshot-dumpxml) and the domain's disk (domblklist) are what the
#     delete promises;
#   - qemu-img: every image touched checks clean, the backing chains are
#     what they must be, and the guest data the domain now sees (qemu-img
#     convert of its disk) is byte for byte what it saw before;
#   - meta check: no problem left.
# Then --metadata-only against libvirt's own snapshot-delete --metadata,
# the refusals (an internal snapshot not in the domain's image, a branch next to the
# snapshot), --dry-run writes nothing, and a fault sweep (killed after
# every metadata write, rename, unlink and mkdir, and after every image
# write of the merge): libvirt loads what each left, the guest data is
# unchanged, and a rerun finishes. Last, a lab of internal snapshots
# only: libvirt's offline delete (qemu-img snapshot -d) on one copy,
# qcowkit's on the other, compared, and a fault sweep of it.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img qemu-io jq cmp
scratch

ROOT=$T/root
IMG=$T/img
lab_init

if ! { V "define $T/dom.xml" && lab_write 0 1 && V "snapshot-create-as vm1 s1" \
       && lab_write 1M 2 && V "snapshot-create-as vm1 e1 --disk-only" && lab_write 2M 3 \
       && V "snapshot-create-as vm1 e2 --disk-only" && lab_write 3M 4; } > "$T/mk.out" 2>&1; then
  fail "libvirt makes the lab" "$(cat "$T/mk.out")"
  done_testing; exit
fi
pass "libvirt makes s1 (internal), then e1 and e2 (external), with writes between"
S=$ROOT/lib/qemu/snapshot/vm1
lab_save
qemu-img convert -O raw "$IMG/vm1.e2" "$T/guest.raw"
name_parent () { awk 'NF >= 5 { print $1 (NF >= 6 ? " " $6 : "") }' | sort | tr '\n' ' '; }

# view NAME PARENTS CURRENT DISK: what a fresh libvirt sees
view () {
  local out
  if ! out=$(V "snapshot-list vm1 --parent" 2>&1); then
    fail "$1: a fresh libvirt loads the metadata" "$out"; return
  fi
  is "$(name_parent <<< "$out")" "$2" "$1: libvirt's snapshots and parents"
  is "$(V "snapshot-current vm1 --name" 2>/dev/null)" "$3" "$1: libvirt's current snapshot"
  is "$(lab_disk)" "$4" "$1: the domain's disk (domblklist)"
}
# data NAME: the guest data through the domain's disk is what it was;
# every image of its chain checks clean
data () {
  local d; d=$(lab_disk)
  ok "$1: the guest data is unchanged (qemu-img compare with the raw image from before)" \
    qemu-img compare -q -f raw "$T/guest.raw" "$d"
  local bad=
  for i in $(qemu-img info --backing-chain --output=json "$d" | jq -r '.[].filename'); do
    qemu-img check -q "$i" > /dev/null 2>&1 || bad="$bad $i"
  done
  ok "$1: qemu-img check is clean on every image of the chain" test -z "$bad"
  Q check vm1 --output=json > "$T/c.json" 2> /dev/null
  is "$(jq -r '[.problems[] | select(.class != "info") | .name] | join(" ")' "$T/c.json")" "" \
    "$1: meta check finds no problem"
}
backing () { qemu-img info --output=json "$1" | jq -r '."backing-filename" // "none"'; }

# ---- libvirt 9.0 cannot do it offline ----
cp -a "$ROOT" "$T/lvcopy"
out=$(timeout 120 virsh -q -c "qemu:///embed?root=$T/lvcopy" "snapshot-delete vm1 e1" 2>&1)
rc=$?
diag "libvirt's own offline delete of e1: exit $rc: $out"
ok "libvirt refuses to delete the external snapshot e1 of the inactive domain (what meta delete is for)" test $rc -ne 0
rm -rf "$T/lvcopy"

# ---- e1: the middle of the chain ----
Q delete vm1 e1 --output=json > "$T/d.json" 2> "$T/d.err"; rc=$?
is "$rc" 0 "delete e1: exit 0"
is "$(jq -r '[.changes[] | select(.kind == "image") | .action + " " + (.path | sub(".*/"; "")) + " " + ((.["new-path"] // "") | sub(".*/"; ""))] | join(", ")' "$T/d.json")" \
  "commit vm1.e1 vm1.qcow2, rebase vm1.e2 vm1.qcow2, unused vm1.e1 " \
  "delete e1: merges vm1.e1 into vm1.qcow2, rebases vm1.e2 onto it, says vm1.e1 is unused"
view "delete e1" "e2 s1 s1 " e2 "$IMG/vm1.e2"
is "$(backing "$IMG/vm1.e2")" "$IMG/vm1.qcow2" "delete e1: vm1.e2 backs onto vm1.qcow2"
ok "delete e1: e2's <domain> source is vm1.qcow2 now (snapshot-dumpxml)" \
  sh -c "timeout 60 virsh -q -c 'qemu:///embed?root=$ROOT' snapshot-dumpxml vm1 e2 | grep -q \"<source file='$IMG/vm1.qcow2'\""
data "delete e1"
ok "delete e1: vm1.e1 is left in place (qcowkit removes only what it made)" test -f "$IMG/vm1.e1"
ok "delete e1: e1.xml is kept in a backup directory" sh -c "ls '$ROOT'/lib/qemu/snapshot/.vm1.qk-delete.*/e1.xml > /dev/null"
Q delete vm1 e1 > /dev/null 2>&1
is "$?" 1 "delete e1 again: no such snapshot (exit 1)"

# ---- e2 then: the current snapshot, its overlay the domain's disk ----
Q delete vm1 e2 > "$T/out" 2>&1; rc=$?
is "$rc" 0 "then delete e2 (current, the active overlay): exit 0"
view "delete e2 after e1" "s1 " s1 "$IMG/vm1.qcow2"
data "delete e2 after e1"
ok "the domain definition was kept before it was changed" sh -c "ls '$ROOT'/etc/qemu/.vm1.qk-delete.*/vm1.xml > /dev/null"

# ---- e2 alone ----
lab_restore
Q delete vm1 e2 > "$T/out" 2>&1
is "$?" 0 "delete e2 alone: exit 0"
view "delete e2" "e1 s1 s1 " e1 "$IMG/vm1.e1"
data "delete e2"

# ---- --children ----
lab_restore
Q delete vm1 e1 --children > "$T/out" 2>&1
is "$?" 0 "delete e1 --children: exit 0"
view "delete e1 --children" "s1 " s1 "$IMG/vm1.qcow2"
data "delete e1 --children"

# ---- --children-only ----
lab_restore
Q delete vm1 s1 --children-only > "$T/out" 2>&1
is "$?" 0 "delete s1 --children-only: exit 0 (e2, then e1, merged; s1 kept)"
view "delete s1 --children-only" "s1 " s1 "$IMG/vm1.qcow2"
data "delete s1 --children-only"
is "$(qemu-img snapshot -l "$IMG/vm1.qcow2" | awk 'NR > 2 { print $2 }')" s1 \
  "delete s1 --children-only: the internal snapshot s1 is still in vm1.qcow2"

# ---- an internal snapshot not in the domain's image: refused ----
# (s1 is in vm1.qcow2, the domain's disk is vm1.e2: libvirt deletes
# internal snapshots in the active image, so neither can here)
lab_restore
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q delete vm1 s1 > "$T/out" 2>&1; rc=$?
is "$rc" 1 "delete s1 (internal, not in the domain's image vm1.e2): refused (exit 1)"
ok "and says why and what to do" grep -q "holds no qcow2 snapshot 's1'.*use --metadata-only" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "and nothing was written"

# ---- --metadata-only: what libvirt's snapshot-delete --metadata does ----
lab_restore
cp -a "$ROOT" "$T/lvcopy"
timeout 120 virsh -q -c "qemu:///embed?root=$T/lvcopy" "snapshot-delete vm1 s1 --metadata" > /dev/null 2>&1
lvview=$(timeout 120 virsh -q -c "qemu:///embed?root=$T/lvcopy" "snapshot-list vm1 --parent" | name_parent)
lvcur=$(timeout 120 virsh -q -c "qemu:///embed?root=$T/lvcopy" "snapshot-current vm1 --name" 2>/dev/null)
rm -rf "$T/lvcopy"
Q delete vm1 s1 --metadata-only > "$T/out" 2>&1
is "$?" 0 "delete s1 --metadata-only: exit 0"
view "delete s1 --metadata-only, as libvirt's snapshot-delete --metadata" "$lvview" "$lvcur" "$IMG/vm1.e2"
ok "delete s1 --metadata-only: the images are untouched" \
  sh -c "cd '$T' && for f in img/*; do cmp -s \"\$f\" \"save/\$f\" || exit 1; done"

# ---- a branch next to the snapshot: refused ----
lab_restore
qemu-img create -q -f qcow2 -F qcow2 -b "$IMG/vm1.e1" "$IMG/vm1.e3"
sed -e 's|<name>e2</name>|<name>e3</name>|' -e "s|$IMG/vm1.e2|$IMG/vm1.e3|" \
    -e 's|<active>1</active>|<active>0</active>|' "$S/e2.xml" > "$S/e3.xml"
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q delete vm1 e2 > "$T/out" 2>&1; rc=$?
is "$rc" 1 "delete e2 while e3 (a branch next to it) also froze vm1.e1: refused"
ok "and names the branch" grep -q "the snapshot 'e3' froze $IMG/vm1.e1 too" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "and nothing was written"

# ---- --dry-run ----
lab_restore
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q delete vm1 e1 --dry-run > "$T/out" 2>&1; rc=$?
is "$rc" 0 "--dry-run: exit 0"
ok "--dry-run: says it would merge vm1.e1 into vm1.qcow2" grep -q "merge $IMG/vm1.e1 into $IMG/vm1.qcow2" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "--dry-run: nothing was written"

# ---- fault sweep ----
# killed after each metadata operation and after each image write of the
# merge: libvirt loads what is left, the guest reads the same, a rerun
# finishes with the uninterrupted run's result
n=0 bad=
sweep_point () {
  local out
  lab_restore
  QCOWKIT_FAULT=$1 Q delete vm1 e1 > /dev/null 2>&1
  [ $? -eq 137 ] || return 1
  n=$((n + 1))
  # one libvirt load: it lists the snapshots, and gives the disk
  out=$(V "snapshot-list vm1 --name; domblklist vm1" 2>&1) || bad="$bad $1:libvirt-load"
  qemu-img compare -q -f raw "$T/guest.raw" "$(awk '$1 == "vda" { print $2 }' <<< "$out")" 2>/dev/null \
    || bad="$bad $1:data"
  if [ -f "$S/e1.xml" ]; then
    Q delete vm1 e1 > "$T/rerun.out" 2>&1 || bad="$bad $1:rerun($(tail -1 "$T/rerun.out"))"
  fi
  out=$(V "snapshot-list vm1 --parent; domblklist vm1" 2>/dev/null)
  [ "$(name_parent <<< "$out")|$(awk '$1 == "vda" { print $2 }' <<< "$out")" = "e2 s1 s1 |$IMG/vm1.e2" ] \
    || bad="$bad $1:final-view"
  [ "$(backing "$IMG/vm1.e2")" = "$IMG/vm1.qcow2" ] || bad="$bad $1:final-chain"
  qemu-img compare -q -f raw "$T/guest.raw" "$IMG/vm1.e2" 2>/dev/null || bad="$bad $1:final-data"
  qemu-img check -q "$IMG/vm1.qcow2" > /dev/null 2>&1 || bad="$bad $1:check"
  return 0
}
for op in mkdir write rename unlink; do
  for i in $(seq 1 12); do sweep_point "after-$op-$i" || break; done
done
meta_points=$n
for i in $(seq 1 40); do sweep_point "write-kill-$i" || break; done
ok "fault sweep: killed at $meta_points metadata points and $((n - meta_points)) image writes; libvirt loads each state, the guest data never changes, a rerun finishes" \
  test -z "$bad" -a "$meta_points" -ge 5 -a "$((n - meta_points))" -ge 3
[ -z "$bad" ] || diag "failed points:$bad"

# ---- internal snapshots, against libvirt's own offline delete ----
# A second lab: i1, i2, i3 internal (virsh snapshot-create-as on the
# inactive domain), a chain, writes between. libvirt 9.0 deletes them
# offline (qemu-img snapshot -d on the domain's image): each case is run
# by libvirt on one copy and by qcowkit on the other, and compared.
rm -rf "$ROOT" "$IMG"
lab_init
if ! lab_internal; then
  fail "libvirt makes the internal lab" "$(cat "$T/mk.out")"
  done_testing; exit
fi
lab_save
# result: what a fresh libvirt and qemu-img see now
result () {
  printf '%s|%s|%s' "$(V "snapshot-list vm1 --tree" | sed '/^ *$/d')" \
    "$(V "snapshot-current vm1 --name" 2>/dev/null)" "$(lab_snaps)"
}
# icase NAME ARGS...: virsh snapshot-delete ARGS, then qcowkit's (on the
# lab as lab_refusable "$edit" makes it, when edit is set)
icase () {
  local what=$1 lv; shift
  lab_restore; lab_refusable "${edit:-none}"
  V "snapshot-delete vm1 $*" > "$T/lv.out" 2>&1 || { fail "$what: libvirt deletes" "$(cat "$T/lv.out")"; return; }
  lv=$(result); cp "$IMG/vm1.qcow2" "$T/lv.qcow2"
  lab_restore; lab_refusable "${edit:-none}"
  Q delete vm1 "$@" > "$T/out" 2>&1
  is "$?" 0 "$what: qcowkit exit 0"
  is "$(result)" "$lv" "$what: tree, current and qcow2 snapshots as libvirt's delete leaves them"
  ok "$what: qemu-img check clean" qemu-img check -q "$IMG/vm1.qcow2"
  ok "$what: the guest data is libvirt's result's (qemu-img compare)" qemu-img compare -q "$T/lv.qcow2" "$IMG/vm1.qcow2"
}
icase "internal delete i2 (a middle one)" i2
icase "internal delete i3 (the current one)" i3
icase "internal delete i1 --children" i1 --children
icase "internal delete i1 --children-only" i1 --children-only
# a snapshot with memory state is deleted offline as any internal one
edit=memory icase "internal delete i1 holding memory state" i1
# refused before any write (lab_refusable in meta-lib.sh): what libvirt
# loads but qcowkit cannot delete safely
drefused () {  # drefused KIND PATTERN DESC
  local st0
  lab_restore
  lab_refusable "$1" || { fail "$3: the lab is edited"; return; }
  ok "$3: libvirt loads the metadata" V "snapshot-info vm1 i1"
  st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
  Q delete vm1 i1 > "$T/out" 2>&1
  is "$?" 1 "$3: refused (exit 1)"
  ok "$3: says why" grep -q "$2" "$T/out"
  is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "$3: nothing was written"
}
drefused manual "has manual disk snapshots" "delete i1 with a manual disk snapshot"
# the qcow2 snapshot i1 no longer has libvirt metadata that claims it: the
# record names the image qemu-img finds it in (its file field)
qemu-img snapshot -l "$IMG/vm1.qcow2" | awk 'NR > 2 { print $2 }' | grep -qx i1 ||
  fail "qemu-img lists i1 in vm1.qcow2"
Q check vm1 --output=json > "$T/c.json" 2> /dev/null
is "$(jq -r '.problems[] | select(.name == "INT_SNAPSHOT_UNKNOWN") | .file' "$T/c.json")" \
  "$IMG/vm1.qcow2" "INT_SNAPSHOT_UNKNOWN's record names the image holding i1 (qemu-img snapshot -l)"
drefused mixed "mixes internal and external" "delete i1 with vda internal, vdb external"
lab_restore
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q delete vm1 i1 --dry-run > "$T/out" 2>&1
is "$?" 0 "internal delete --dry-run: exit 0"
ok "internal delete --dry-run: names the image" grep -q "delete the internal snapshot in $IMG/vm1.qcow2" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "internal delete --dry-run: nothing was written"
# under --sysroot: refused
lab_restore
qcowkit meta delete vm1 i2 --libvirt-root "$ROOT" --sysroot / > "$T/out" 2>&1
is "$?" 1 "internal delete under --sysroot: refused"
# fault sweep: killed after every metadata operation and image write; a
# fresh libvirt loads what is left, a rerun finishes with the
# uninterrupted result
lab_restore
Q delete vm1 i2 > /dev/null 2>&1
want=$(result); cp "$IMG/vm1.qcow2" "$T/want.qcow2"
n=0 bad=
ipoint () {
  lab_restore
  QCOWKIT_FAULT=$1 Q delete vm1 i2 > /dev/null 2>&1
  [ $? -eq 137 ] || return 1
  n=$((n + 1))
  V "snapshot-list vm1 --name" > /dev/null 2>&1 || bad="$bad $1:libvirt-load"
  if [ -f "$ROOT/lib/qemu/snapshot/vm1/i2.xml" ]; then
    Q delete vm1 i2 > "$T/rerun.out" 2>&1 || bad="$bad $1:rerun($(tail -1 "$T/rerun.out"))"
  fi
  [ "$(result)" = "$want" ] || bad="$bad $1:final-view"
  # a kill inside qk_snapshot_delete may leave leaked clusters (its
  # protocol), which the rerun does not touch again: leaks only (exit 3)
  qemu-img check -q "$IMG/vm1.qcow2" > /dev/null 2>&1
  case $? in 0) ;; 3) leaks=$((leaks + 1)) ;; *) bad="$bad $1:check" ;; esac
  qemu-img compare -q "$T/want.qcow2" "$IMG/vm1.qcow2" > /dev/null 2>&1 || bad="$bad $1:data"
  return 0
}
leaks=0
for op in mkdir write rename unlink; do
  for i in $(seq 1 8); do ipoint "after-$op-$i" || break; done
done
meta_points=$n
for i in $(seq 1 30); do ipoint "write-kill-$i" || break; done
ok "internal delete fault sweep: killed at $meta_points metadata points and $((n - meta_points)) image writes; libvirt loads each state, a rerun finishes as the uninterrupted run ($leaks left leaked clusters only)" \
  test -z "$bad" -a "$meta_points" -ge 4 -a "$((n - meta_points))" -ge 2
[ -z "$bad" ] || diag "failed points:$bad"
done_testing
