#!/bin/bash
# qcowkit meta revert against a real libvirt (embedded QEMU driver) and
# qemu-img. libvirt makes s1 (internal), then e1 and e2 (disk-only
# external) with guest writes between; qcowkit reverts the inactive domain
# to e1 or e2 the way seed 001 designs it: a new overlay on the images the
# snapshot froze, the definition pointed at it, the snapshot current,
# the children kept. Each case asks:
#   - libvirt: a fresh embedded libvirt loads the result, its tree and
#     current snapshot are the promised ones, its disk (domblklist) is the
#     new overlay, and it takes a new snapshot there, which starts a new
#     branch below the reverted one (the design's point);
#   - qemu-img: the new overlay backs onto the frozen image and the guest
#     now reads exactly what it read when the snapshot was taken (qemu-img
#     compare with the raw image saved then); the old disk is unchanged;
#   - meta check: no problem left.
# Then --discard-children, a second revert (a new overlay, not the used
# one), the refusals (an internal snapshot not in the domain's image),
# --dry-run, and a fault sweep. Last, a lab of internal snapshots only:
# libvirt's offline revert (qemu-img snapshot -a) on one copy, qcowkit's
# on the other, compared, and a fault sweep of it.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img qemu-io jq cmp
scratch

ROOT=$T/root
IMG=$T/img
lab_init

# the guest data at each snapshot is saved as it is taken
if ! { V "define $T/dom.xml" && lab_write 0 1 && V "snapshot-create-as vm1 s1" \
       && lab_write 1M 2 && qemu-img convert -O raw "$(lab_disk)" "$T/at-e1.raw" \
       && V "snapshot-create-as vm1 e1 --disk-only" && lab_write 2M 3 \
       && qemu-img convert -O raw "$(lab_disk)" "$T/at-e2.raw" \
       && V "snapshot-create-as vm1 e2 --disk-only" && lab_write 3M 4; } > "$T/mk.out" 2>&1; then
  fail "libvirt makes the lab" "$(cat "$T/mk.out")"
  done_testing; exit
fi
pass "libvirt makes s1 (internal), then e1 and e2 (external), with writes between"
S=$ROOT/lib/qemu/snapshot/vm1
lab_save
tree0=$(V "snapshot-list vm1 --tree" | sed '/^ *$/d')
backing () { qemu-img info --output=json "$1" | jq -r '."backing-filename" // "none"'; }
e2sum=$(sha256sum < "$IMG/vm1.e2")

# reverted NAME SNAP FROZEN RAW: the checks after a revert to SNAP
reverted () {
  local d out
  d=$(lab_disk)
  is "$d" "$IMG/vm1.$2-revert" "$1: the domain's disk is the new overlay (domblklist)"
  is "$(V "snapshot-current vm1 --name" 2>/dev/null)" "$2" "$1: libvirt's current snapshot is $2"
  is "$(backing "$d")" "$IMG/$3" "$1: the new overlay backs onto $3, the image $2 froze"
  ok "$1: the guest reads what it read when $2 was taken (qemu-img compare)" \
    qemu-img compare -q -f raw "$T/$4" "$d"
  qemu-img check -q "$d" > /dev/null 2>&1
  is "$?" 0 "$1: qemu-img check finds the new overlay clean"
  Q check vm1 --output=json > "$T/c.json" 2> /dev/null
  is "$(jq -r '[.problems[] | select(.class != "info") | .name] | join(" ")' "$T/c.json")" "" \
    "$1: meta check finds no problem"
}

# ---- e1, children kept ----
Q revert vm1 e1 --output=json > "$T/r.json" 2> "$T/r.err"; rc=$?
is "$rc" 0 "revert to e1: exit 0"
reverted "revert to e1" e1 vm1.qcow2 at-e1.raw
is "$(V "snapshot-list vm1 --tree" | sed '/^ *$/d')" "$tree0" "revert to e1: libvirt's tree is unchanged (e2 kept)"
is "$(sha256sum < "$IMG/vm1.e2")" "$e2sum" "revert to e1: vm1.e2, the disk before, is unchanged"
is "$(jq -r '[.changes[] | select(.kind == "image") | .action] | join(" ")' "$T/r.json")" "create kept" \
  "revert to e1: JSON: the overlay created, the old disk kept"
if out=$(V "snapshot-create-as vm1 e3 --disk-only" 2>&1); then
  pass "libvirt takes a new snapshot e3 on the reverted domain"
  is "$(V "snapshot-list vm1 --parent" | awk 'NF >= 6 && $1 == "e3" { print $6 }')" e1 \
    "e3 is a child of e1: a new branch next to e2"
  Q check vm1 > /dev/null 2>&1
  is "$?" 0 "meta check of the tree with the new branch: clean"
else
  fail "libvirt takes a new snapshot e3 on the reverted domain" "$out"
fi

# ---- a second revert to e1: a new overlay, the used one kept ----
Q revert vm1 e1 > "$T/out" 2>&1
is "$?" 0 "a second revert to e1: exit 0"
is "$(lab_disk)" "$IMG/vm1.e1-revert2" "a second revert to e1: a new overlay (vm1.e1-revert2), the used one is not reused"
ok "a second revert: the guest reads e1's data again" qemu-img compare -q -f raw "$T/at-e1.raw" "$(lab_disk)"

# ---- e2, the current snapshot ----
lab_restore
Q revert vm1 e2 > "$T/out" 2>&1
is "$?" 0 "revert to e2: exit 0"
reverted "revert to e2" e2 vm1.e1 at-e2.raw

# ---- --discard-children ----
lab_restore
Q revert vm1 e1 --discard-children > "$T/out" 2>&1
is "$?" 0 "revert to e1 --discard-children: exit 0"
reverted "revert to e1 --discard-children" e1 vm1.qcow2 at-e1.raw
is "$(V "snapshot-list vm1 --name" | awk NF | sort | tr '\n' ' ')" "e1 s1 " \
  "--discard-children: libvirt knows s1 and e1 only"
ok "--discard-children: e2.xml kept in the backup directory" sh -c "ls '$ROOT'/lib/qemu/snapshot/.vm1.qk-revert.*/e2.xml > /dev/null"
is "$(sha256sum < "$IMG/vm1.e2")" "$e2sum" "--discard-children: vm1.e2 itself is left as it was"

# ---- an internal snapshot not in the domain's image: refused ----
lab_restore
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q revert vm1 s1 > "$T/out" 2>&1; rc=$?
is "$rc" 1 "revert to s1 (internal, in vm1.qcow2, the disk is vm1.e2): refused (exit 1)"
ok "and says why" grep -q "holds no qcow2 snapshot 's1'" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "and nothing was written"

# ---- --dry-run ----
Q revert vm1 e1 --dry-run > "$T/out" 2>&1; rc=$?
is "$rc" 0 "--dry-run: exit 0"
ok "--dry-run: says it would create the overlay" grep -q "create $IMG/vm1.e1-revert, an empty overlay on $IMG/vm1.qcow2" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "--dry-run: nothing was written"

# ---- fault sweep ----
# killed after each operation: libvirt loads what is left, the domain
# reads either the state before or e1's, and a rerun finishes (a kill
# right after the overlay was made leaves it unused, and the rerun makes
# the next name)
n=0 bad=
for op in mkdir write rename unlink; do
  for i in $(seq 1 10); do
    lab_restore
    QCOWKIT_FAULT=after-$op-$i Q revert vm1 e1 > /dev/null 2>&1
    [ $? -eq 137 ] || break
    n=$((n + 1))
    # one libvirt load: it lists the snapshots, and gives the disk
    out=$(V "snapshot-list vm1 --name; domblklist vm1" 2>&1) || bad="$bad $op-$i:libvirt-load"
    d=$(awk '$1 == "vda" { print $2 }' <<< "$out")
    if ! qemu-img compare -q -f raw "$T/at-e1.raw" "$d" 2>/dev/null; then
      qemu-img compare -q "$SAVE/img/vm1.e2" "$d" 2>/dev/null || bad="$bad $op-$i:data"
    fi
    Q revert vm1 e1 > "$T/rerun.out" 2>&1 || bad="$bad $op-$i:rerun"
    out=$(V "domblklist vm1; snapshot-current vm1 --name" 2>/dev/null)
    d=$(awk '$1 == "vda" { print $2 }' <<< "$out")
    case $d in "$IMG/vm1.e1-revert"*) ;; *) bad="$bad $op-$i:disk($d)" ;; esac
    qemu-img compare -q -f raw "$T/at-e1.raw" "$d" 2>/dev/null || bad="$bad $op-$i:final-data"
    grep -qx "e1" <<< "$(sed 's/vda.*//' <<< "$out" | awk NF | tail -1)" || bad="$bad $op-$i:current"
  done
done
ok "fault sweep: killed at $n points; libvirt loads each state, the domain reads the old or e1's data, a rerun finishes" \
  test -z "$bad" -a "$n" -ge 4
[ -z "$bad" ] || diag "failed points:$bad"

# ---- internal snapshots, against libvirt's own offline revert ----
# A second lab: i1, i2, i3 internal (virsh snapshot-create-as on the
# inactive domain), writes between. libvirt 9.0 reverts an inactive
# domain to them offline (qemu-img snapshot -a): libvirt on one copy,
# qcowkit on the other, compared.
rm -rf "$ROOT" "$IMG"
lab_init
if ! lab_internal "$T/at-i1.raw"; then
  fail "libvirt makes the internal lab" "$(cat "$T/mk.out")"
  done_testing; exit
fi
lab_save
result () {
  printf '%s|%s|%s|%s' "$(V "snapshot-list vm1 --tree" | sed '/^ *$/d')" \
    "$(V "snapshot-current vm1 --name" 2>/dev/null)" "$(lab_snaps)" "$(V "dumpxml vm1 --inactive")"
}
for snap in i1 i2; do
  lab_restore
  V "snapshot-revert vm1 $snap" > "$T/lv.out" 2>&1 || fail "libvirt reverts to $snap" "$(cat "$T/lv.out")"
  lv=$(result); cp "$IMG/vm1.qcow2" "$T/lv.qcow2"
  lab_restore
  Q revert vm1 $snap > "$T/out" 2>&1
  is "$?" 0 "internal revert to $snap: exit 0"
  is "$(result)" "$lv" "internal revert to $snap: tree, current, qcow2 snapshots and definition (dumpxml) as libvirt's revert leaves them"
  ok "internal revert to $snap: qemu-img check clean" qemu-img check -q "$IMG/vm1.qcow2"
  ok "internal revert to $snap: the guest data is libvirt's result's (qemu-img compare)" \
    qemu-img compare -q "$T/lv.qcow2" "$IMG/vm1.qcow2"
done
ok "internal revert to i2 then i1: the guest reads what it read at i1" \
  sh -c "'$(command -v qcowkit)' meta revert vm1 i1 --libvirt-root '$ROOT' > /dev/null && qemu-img compare -q -f raw '$T/at-i1.raw' '$IMG/vm1.qcow2'"
want=$(result); cp "$IMG/vm1.qcow2" "$T/want.qcow2"
lab_restore
st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
Q revert vm1 i1 --dry-run > "$T/out" 2>&1
is "$?" 0 "internal revert --dry-run: exit 0"
ok "internal revert --dry-run: names the image" grep -q "apply the internal snapshot in $IMG/vm1.qcow2" "$T/out"
is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "internal revert --dry-run: nothing was written"
# fault sweep of the revert to i1 from the lab's state
n=0 bad=
for spec in after-mkdir after-write after-rename after-unlink write-kill; do
  for i in $(seq 1 30); do
    op=$spec
    lab_restore
    QCOWKIT_FAULT=$spec-$i Q revert vm1 i1 > /dev/null 2>&1
    [ $? -eq 137 ] || break
    n=$((n + 1))
    V "snapshot-list vm1 --name" > /dev/null 2>&1 || bad="$bad $op-$i:libvirt-load"
    # killed inside qk_snapshot_apply: leaked clusters at most (exit 3),
    # which the rerun's apply frees
    qemu-img check -q "$IMG/vm1.qcow2" > /dev/null 2>&1
    case $? in 0|3) ;; *) bad="$bad $op-$i:check" ;; esac
    Q revert vm1 i1 > "$T/rerun.out" 2>&1 || bad="$bad $op-$i:rerun"
    qemu-img check -q "$IMG/vm1.qcow2" > /dev/null 2>&1 || bad="$bad $op-$i:final-check"
    [ "$(result)" = "$want" ] || bad="$bad $op-$i:final-view"
    qemu-img compare -q "$T/want.qcow2" "$IMG/vm1.qcow2" > /dev/null 2>&1 || bad="$bad $op-$i:data"
  done
done
ok "internal revert fault sweep (metadata operations and image writes): killed at $n points; libvirt loads each state, a rerun finishes" \
  test -z "$bad" -a "$n" -ge 3
[ -z "$bad" ] || diag "failed points:$bad"
# ---- refused before any write ----
# lab_refusable (meta-lib.sh) edits i1 into what libvirt loads but an
# offline revert cannot do; the revert is refused and writes nothing
refused () {  # refused KIND PATTERN DESC [OPTION...]
  local st0
  lab_restore
  lab_refusable "$1" || { fail "$3: the lab is edited"; return; }
  ok "$3: libvirt loads the metadata" V "snapshot-info vm1 i1"
  st0=$(cd "$T" && find root img -type f | sort | xargs sha256sum)
  Q revert vm1 i1 "${@:4}" > "$T/out" 2>&1
  is "$?" 1 "$3: refused (exit 1)"
  ok "$3: says why" grep -q "$2" "$T/out"
  is "$(cd "$T" && find root img -type f | sort | xargs sha256sum)" "$st0" "$3: nothing was written"
}
refused memory "holds the VM's memory (state running)" "revert to i1 with memory state"
refused manual "a 'manual' disk snapshot" "revert to i1 with a manual disk snapshot"
refused mixed "mixes internal and external" "revert to i1 with vda internal, vdb external"
refused none "would leave its descendants' qcow2 snapshots" \
  "revert to internal i1 --discard-children (i2, i3 below it)" --discard-children
done_testing
