#!/bin/bash
# End to end with a real libvirt (embedded QEMU driver, no daemon): libvirt
# writes snapshot and checkpoint metadata (internal snapshots with a branch
# from a revert, external snapshots, checkpoints on a running domain);
# qcowkit meta check finds it clean and agrees with virsh's tree; then each
# kind of damage, made to files and images, gives exactly the expected
# problems; convert to bulk and back leaves what a fresh virsh shows
# unchanged; convert refuses while libvirt holds the location.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img jq
scratch

ROOT=$T/root
IMG=$T/img
lab_init
Q () { qcowkit meta "$1" --libvirt-root "$ROOT" "${@:2}"; }

if ! out=$(V "define $T/dom.xml; snapshot-create-as vm1 s1; snapshot-create-as vm1 s2; snapshot-revert vm1 s1; snapshot-create-as vm1 s3; snapshot-create-as vm1 e1 --disk-only; snapshot-create-as vm1 e2 --disk-only" 2>&1); then
  fail "libvirt creates the snapshots" "$out"
  done_testing; exit
fi
pass "libvirt creates internal snapshots (with a branch) and external ones"
if ! out=$(V "start vm1; checkpoint-create-as vm1 c1; checkpoint-create-as vm1 c2; destroy vm1" 2>&1); then
  fail "libvirt creates the checkpoints" "$out"
  done_testing; exit
fi
pass "libvirt creates checkpoints on the running domain"

virsh_state () {
  V "snapshot-list vm1 --tree; snapshot-current vm1 --name; checkpoint-list vm1 --tree" 2>&1
}
base=$(virsh_state)
snaptree=$(V snapshot-list vm1 --tree)
diag "virsh sees:"; echo "$base" | sed 's/^/#   /'

# ---- clean ----
Q check vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 0 "meta check of libvirt's own metadata exits 0"
ok "and reports no errors" grep -q "No errors were found" "$T/out"
Q check vm1 --output=json > "$T/clean.json"
is "$(problems "$T/clean.json")" "" "no problem at all, not even a warning"
is "$(jq -r '.snapshots.layout + " " + .snapshots.current + " " + (.snapshots.count|tostring)' "$T/clean.json")" \
  "per-file e2 5" "JSON: per-file layout, current e2, 5 snapshots"
is "$(jq -r '.checkpoints.current' "$T/clean.json")" c2 "JSON: current checkpoint c2"
is "$(Q tree vm1)" "$(V snapshot-list vm1 --tree)" "meta tree prints what virsh snapshot-list --tree prints"
is "$(Q tree --kind checkpoint vm1)" "$(V checkpoint-list vm1 --tree)" "and checkpoint-list --tree"

# ---- damage: each case on a fresh copy, then restored ----
SAVE=$T/save
mkdir -p "$SAVE"
cp -a "$ROOT/lib/qemu" "$SAVE/qemu"
cp -a "$ROOT/etc/qemu" "$SAVE/etc"
cp -a "$IMG" "$SAVE/img"
restore () {
  rm -rf "$ROOT/lib/qemu" "$ROOT/etc/qemu" "$IMG"
  cp -a "$SAVE/qemu" "$ROOT/lib/qemu"
  cp -a "$SAVE/etc" "$ROOT/etc/qemu"
  cp -a "$SAVE/img" "$IMG"
}
S=$ROOT/lib/qemu/snapshot/vm1
C=$ROOT/lib/qemu/checkpoint/vm1
# case NAME "EXPECTED PROBLEMS" COMMAND...
case_ () {
  local name=$1 want=$2; shift 2
  restore
  if ! "$@"; then fail "$name: making the damage"; return; fi
  Q check vm1 --output=json > "$T/case.json" 2>"$T/case.err"
  local got; got=$(problems "$T/case.json")
  is "$got" "$want" "$name"
  if [ "$got" != "$want" ]; then
    jq -r '.problems[] | "#   " + .name + ": " + .message' "$T/case.json"
  fi
  lv_view "$name"
}
# lv_view NAME: a fresh libvirt loads the same damaged files; the snapshots
# and checkpoints it keeps, and its current snapshot, must be what qcowkit
# says libvirt keeps (meta tree: libvirt's view) and its current one
lv_view () {
  V "snapshot-list vm1 --name; echo @@; checkpoint-list vm1 --name; echo @@; snapshot-current vm1 --name" \
    > "$T/v.raw" 2> "$T/v.err"
  if [ $? -ne 0 ] && ! grep -q "no current snapshot" "$T/v.err"; then
    fail "$1: libvirt loads the metadata" "$(head -3 "$T/v.err")"
    return
  fi
  # virsh's echo ends no line (nor does snapshot-current --name)
  sed 's/@@/\n@@\n/g' "$T/v.raw" > "$T/v.out"
  local vs vc vcur
  vs=$(awk '/^@@/ { exit } NF' "$T/v.out" | sort | tr '\n' ' ')
  vc=$(awk '/^@@/ { s++; next } s == 1 && NF' "$T/v.out" | sort | tr '\n' ' ')
  vcur=$(awk '/^@@/ { s++; next } s == 2 && NF' "$T/v.out")
  Q tree vm1 --kind all --output=json > "$T/tree.json" 2>/dev/null
  is "$(jq -r '.snapshots.moments[].name' "$T/tree.json" | sort | tr '\n' ' ') | $(jq -r '.checkpoints.moments[].name' "$T/tree.json" | sort | tr '\n' ' ') | $(jq -r '.snapshots.current // ""' "$T/tree.json")" \
     "$vs | $vc | $vcur" "$1: what libvirt loads (snapshots | checkpoints | current) is what qcowkit says"
}
sub () { sed -i "$1" "$2"; }
bm_off () { qcowkit dump --output=json "$1" bitmaps | jq -r ".[] | select(.name == \"$2\") | .entry_offset"; }
# poke_bitmap IMAGE BITMAP FIELD-OFFSET QKPOKE-ARGS...: damage a directory entry
poke_bitmap () { local o; o=$(bm_off "$1" "$2") && [ -n "$o" ] && qkpoke "$1" $((o + $3)) "${@:4}"; }

case_ "parent file deleted" "INT_SNAPSHOT_UNKNOWN MISSING_PARENT" rm "$S/s3.xml"
case_ "own parent" "SELF_PARENT" sub 's|<name>s1</name>\(\s*\)</parent>|<name>s2</name>\1</parent>|; /<parent>/,/<\/parent>/ s|<name>s1</name>|<name>s2</name>|' "$S/s2.xml"
case_ "a cycle" "CYCLE CYCLE" sub 's|^  <state>|  <parent>\n    <name>s2</name>\n  </parent>\n  <state>|' "$S/s1.xml"
case_ "two current" "MULTIPLE_CURRENT" sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml"
case_ "a duplicate name" "DUPLICATE_NAME FILE_NAME" cp "$S/s2.xml" "$S/s2-copy.xml"
case_ "file name not NAME.xml" "FILE_NAME" mv "$S/s2.xml" "$S/other.xml"
case_ "a file that does not parse" "INT_SNAPSHOT_UNKNOWN PARSE" truncate -s 300 "$S/s2.xml"
case_ "a name unsafe as a file name" "INT_SNAPSHOT_MISSING INT_SNAPSHOT_UNKNOWN UNSAFE_NAME" sub '0,/<name>s2</s|<name>s2<|<name>../s2<|' "$S/s2.xml"
case_ "no <name>" "INT_SNAPSHOT_UNKNOWN MISSING_NAME" sub '0,/<name>s2<\/name>/{/<name>s2<\/name>/d}' "$S/s2.xml"
case_ "no <state>" "INT_SNAPSHOT_UNKNOWN MISSING_STATE" sub '/<state>/d' "$S/s2.xml"
case_ "no <creationTime>" "INT_SNAPSHOT_UNKNOWN MISSING_CTIME" sub '/<creationTime>/d' "$S/s2.xml"
case_ "no <active>" "INT_SNAPSHOT_UNKNOWN MISSING_ACTIVE" sub '/<active>/d' "$S/s2.xml"
case_ "another domain UUID" "UUID_MISMATCH" sub 's|<uuid>[^<]*</uuid>|<uuid>00000000-0000-0000-0000-000000000001</uuid>|' "$S/s2.xml"
case_ "a child created before its parent" "CHILD_BEFORE_PARENT" sub 's|<creationTime>[0-9]*<|<creationTime>1<|' "$S/s3.xml"
case_ "a leftover snapshotDeleteInProgress" "DELETE_IN_PROGRESS" sub 's|<source file=\(.*\)/>|<source file=\1/>\n      <snapshotDeleteInProgress/>|' "$S/e1.xml"
case_ "a qcow2 snapshot deleted" "INT_SNAPSHOT_MISSING" qemu-img snapshot -d s2 "$IMG/vm1.qcow2"
case_ "a qcow2 snapshot libvirt does not know" "INT_SNAPSHOT_UNKNOWN" qemu-img snapshot -c extra "$IMG/vm1.qcow2"
case_ "an internal snapshot in the wrong image" "INT_SNAPSHOT_UNKNOWN INT_SNAPSHOT_WRONG_IMAGE" \
  sh -c "qemu-img snapshot -d s2 '$IMG/vm1.qcow2' && qemu-img snapshot -c s2 '$IMG/vm1.e2'"
case_ "an overlay deleted" "EXT_OVERLAY_MISSING" rm "$IMG/vm1.e1"
case_ "an overlay that is not qcow2" "EXT_OVERLAY_NOT_QCOW2" \
  sh -c "qemu-img convert -O raw '$IMG/vm1.e1' '$T/raw' && mv '$T/raw' '$IMG/vm1.e1'"
case_ "an overlay rebased elsewhere" "EXT_BACKING_MISMATCH" \
  qemu-img rebase -u -F qcow2 -b "$IMG/vm1.qcow2" "$IMG/vm1.e2"
case_ "external chain against the parent order" "EXT_BACKING_MISMATCH EXT_CHAIN_ORDER" \
  sub "/<domain/,/<\/domain>/ s|$IMG/vm1.e1|$IMG/vm1.qcow2|" "$S/e2.xml"
case_ "domain not on the current snapshot's overlay" "BITMAP_MISSING BITMAP_MISSING CURRENT_CHAIN_MISMATCH" \
  sub "s|$IMG/vm1.e2|$IMG/vm1.e1|" "$ROOT/etc/qemu/vm1.xml"
case_ "a checkpoint's bitmap removed" "BITMAP_MISSING" qemu-img bitmap --remove "$IMG/vm1.e2" c1
case_ "a bitmap no checkpoint knows" "BITMAP_UNKNOWN" qemu-img bitmap --add "$IMG/vm1.e2" extra
case_ "a bitmap in use" "BITMAP_IN_USE" poke_bitmap "$IMG/vm1.e2" c2 12 be32 3
case_ "a bitmap with an absurd granularity" "BITMAP_GRANULARITY" poke_bitmap "$IMG/vm1.e2" c2 17 28
case_ "a checkpoint's parent deleted" "BITMAP_UNKNOWN MISSING_PARENT" rm "$C/c1.xml"
restore

# ---- convert to bulk and back ----
if Q convert vm1 --to bulk > "$T/out" 2>&1; then pass "convert --to bulk"; else fail "convert --to bulk" "$(cat "$T/out")"; fi
ok "the snapshots are in snapshot/vm1.xml" test -f "$ROOT/lib/qemu/snapshot/vm1.xml"
ok "the checkpoints are in checkpoint/vm1.xml" test -f "$ROOT/lib/qemu/checkpoint/vm1.xml"
ok "the per-file directory is gone" test ! -e "$S"
ok "and kept as a backup" test -d "$ROOT/lib/qemu/snapshot/.vm1.per-file.qk-backup"
Q check vm1 --output=json > "$T/bulk.json"
is "$(problems "$T/bulk.json")" "" "meta check of the bulk layout is clean"
is "$(jq -r '.snapshots.layout + " " + .snapshots.current' "$T/bulk.json")" "bulk e2" "bulk: current e2 (current= on the root)"
is "$(Q tree vm1)" "$snaptree" "meta tree of the bulk layout is virsh's tree"
is "$(V snapshot-list vm1 --name | grep -c .)" 0 "libvirt 9 does not read the bulk layout (no snapshots seen)"
if Q convert vm1 --to per-file --no-backup > "$T/out" 2>&1; then pass "convert --to per-file"; else fail "convert --to per-file" "$(cat "$T/out")"; fi
ok "the bulk file is gone (--no-backup)" test ! -e "$ROOT/lib/qemu/snapshot/vm1.xml"
d=$(diff -r "$SAVE/qemu/snapshot/vm1" "$S" && diff -r "$SAVE/qemu/checkpoint/vm1" "$C")
is "$d" "" "the files are byte for byte what libvirt wrote"
is "$(virsh_state)" "$base" "a fresh virsh shows the same trees and current snapshot"

# ---- refuses while libvirt holds the location ----
fifo=$T/fifo
mkfifo "$fifo"
timeout 60 virsh -q -c "qemu:///embed?root=$ROOT" < "$fifo" > /dev/null 2>&1 &
vpid=$!
at_exit "kill $vpid 2>/dev/null"
exec 9> "$fifo"
# wait until the driver holds its pid file's lock (in /proc/locks by inode)
held () {
  local ino
  ino=$(stat -c %i "$ROOT/run/qemu/driver.pid" 2>/dev/null) || return 1
  grep -qE "POSIX +ADVISORY +WRITE +[0-9]+ +[0-9a-f]+:[0-9a-f]+:$ino " /proc/locks
}
for _ in $(seq 600); do
  held && break
  sleep 0.1
done
ok "the embedded driver holds its lock" held
Q convert vm1 --to bulk > "$T/out" 2>&1; rc=$?
is "$rc" 1 "convert refuses while an embedded libvirt runs on the root"
ok "and says why" grep -q "locked by process" "$T/out"
ok "nothing was changed" test -d "$S" -a ! -e "$ROOT/lib/qemu/snapshot/vm1.xml"
echo quit >&9
exec 9>&-
wait "$vpid" 2>/dev/null
done_testing
