#!/bin/bash
# qcowkit meta repair against a real libvirt (embedded QEMU driver, no
# daemon). libvirt makes the metadata (internal snapshots with a branch
# from a revert, data written between them, then two external ones); each
# case damages it as a crash, a bad edit or qemu-img would, repairs, and
# then asks:
#   - libvirt, the oracle: a fresh embedded libvirt loads the result with
#     nothing logged, and its view (snapshot-list --tree and --parent,
#     snapshot-current) is what the repair promises; where the damage only
#     undid what libvirt wrote, the repaired file is libvirt's own file
#     byte for byte (cmp), and an adopted snapshot is one libvirt reverts
#     to, giving the guest data qemu-img snapshot -a gives;
#   - the two-run rule: meta check finds no problem of what was fixed, and
#     a second repair has nothing to do (exit 0, no file touched);
#   - every file replaced is kept in the backup directory, byte for byte.
# Then: -n changes nothing, --output=json, a fault sweep (killed after
# every mkdir, write, rename and unlink: libvirt loads what is left and a
# rerun gives the same files as an uninterrupted run), names that would
# leave the directory, a symlinked directory, and the refusal while
# libvirt holds the root.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img qemu-io jq cmp
scratch

ROOT=$T/root
IMG=$T/img
lab_init
W () { qemu-io -f qcow2 -c "write -P $2 $1 1M" "$IMG/vm1.qcow2" > /dev/null; }

# s1 <- s2, and after a revert to s1, s1 <- s3 <- e1 <- e2 (external);
# each snapshot's state differs by a 1 MiB write
if ! { V "define $T/dom.xml" && W 0 1 && V "snapshot-create-as vm1 s1" \
       && W 1M 2 && V "snapshot-create-as vm1 s2; snapshot-revert vm1 s1" \
       && W 2M 3 && V "snapshot-create-as vm1 s3" && W 3M 4 \
       && V "snapshot-create-as vm1 e1 --disk-only; snapshot-create-as vm1 e2 --disk-only"; } > "$T/mk.out" 2>&1; then
  fail "libvirt makes the lab" "$(cat "$T/mk.out")"
  done_testing; exit
fi
pass "libvirt makes internal snapshots with a branch, and external ones"
S=$ROOT/lib/qemu/snapshot/vm1
lab_save
sub () { local e=$1; shift; sed -i -e "$e" "$@"; }
# snapshot-list --parent lines: NAME DATE TIME ZONE STATE [PARENT]
name_parent () { awk 'NF >= 5 { print $1 (NF >= 6 ? " " $6 : "") }' | sort; }
tree0=$(V "snapshot-list vm1 --tree" | sed '/^ *$/d')
parents0=$(V "snapshot-list vm1 --parent" | name_parent)

# the man page's fix table is the program's
qcowkit meta repair --list-fixes=man | sed 1,2d > "$T/fixes.man"
sed -n '/^\.SS METADATA FIXES/,/^\.SH/p' "$srcdir/doc/qcowkit-meta.1" | sed '1,2d;$d' > "$T/fixes.page"
ok "qcowkit-meta(1)'s METADATA FIXES is what --list-fixes=man prints" cmp "$T/fixes.man" "$T/fixes.page"

Q repair -y vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 0 "libvirt's own metadata: nothing to repair (exit 0)"
ok "and says so" grep -q "nothing to repair" "$T/out"

# lv NAME: a fresh libvirt loads the metadata, logging nothing; sets
# $lv_tree, $lv_parents (name parent, sorted), $lv_current
lv () {
  rm -f "$T/lv.log"
  LIBVIRT_LOG_OUTPUTS="3:file:$T/lv.log" \
    V "snapshot-list vm1 --tree; echo @@; snapshot-list vm1 --parent; echo @@; snapshot-current vm1 --name" \
    > "$T/lv.raw" 2> "$T/lv.err"
  local rc=$?
  sed 's/@@/\n@@\n/g' "$T/lv.raw" > "$T/lv.out"
  lv_tree=$(awk '/^@@/ { s++; next } s == 0' "$T/lv.out" | sed '/^ *$/d')
  lv_parents=$(awk '/^@@/ { s++; next } s == 1' "$T/lv.out" | name_parent)
  lv_current=$(awk '/^@@/ { s++; next } s == 2' "$T/lv.out" | awk NF)
  if [ $rc -ne 0 ] && ! grep -q "no current snapshot" "$T/lv.err"; then
    fail "$1: a fresh libvirt loads the repaired metadata" "$(head -3 "$T/lv.err")"
    return 1
  fi
  # what a function that loads or parses metadata logs (the rest is the
  # lab's environment: no KVM, no dmidecode)
  sed -n 's/^.*: \(warning\|error\) : \([A-Za-z0-9_]*\):[0-9]* : \(.*\)$/\2 \3/p' \
      "$T/lv.log" 2>/dev/null |
    grep -E '^(qemuDomain(Snapshot|Checkpoint)Load|virDomain(Moment|Snapshot|Checkpoint)[A-Za-z]*|virXML[A-Za-z]*) ' \
    > "$T/lv.loadlog"
  if [ -s "$T/lv.loadlog" ]; then
    fail "$1: libvirt logs nothing while loading" "$(head -3 "$T/lv.loadlog")"
    return 1
  fi
  pass "$1: a fresh libvirt loads the repaired metadata, logging nothing"
}

# after NAME FIXES: the repair's fixes (sorted names) are FIXES, the exit
# is 1, meta check then has no CORRUPTION and none of the fixed codes, a
# second repair changes nothing; the backup holds each replaced file.
after () {
  local name=$1 want=$2
  is "$(jq -r '[.fixes[] | select(.made) | .name] | sort | join(" ")' "$T/r.json")" "$want" "$name: the fixes made"
  is "$(jq -r .exit "$T/r.json")" 1 "$name: exit 1 (fixed, now clean)"
  jq -r '.changes[] | select(.backup != null) | .backup + " " + .path' "$T/r.json" |
    while read -r b p; do
      cmp -s "$b" "$T/damaged/${p##*/}" || echo "$b"
    done > "$T/badbackup"
  ok "$name: each replaced file is kept in the backup directory as it was" test ! -s "$T/badbackup"
  Q check vm1 --output=json > "$T/c.json" 2>/dev/null
  is "$(jq -r '[.problems[] | select(.class == "corruption" or .class == "warning") | .name] | sort | join(" ")' "$T/c.json")" \
     "${3:-}" "$name: meta check afterwards: no error${3:+ but $3}"
  local before; before=$(cd "$ROOT/lib/qemu" && find . -type f | sort | xargs sha256sum)
  Q repair -y vm1 > "$T/r2.out" 2>&1; local rc2=$?
  is "$rc2" 0 "$name: a second repair has nothing to do (exit 0)"
  is "$(cd "$ROOT/lib/qemu" && find . -type f | sort | xargs sha256sum)" "$before" "$name: and changes no file"
}
# repair NAME DAMAGE...: restore, damage, keep the damaged files, repair -y
repair () {
  local name=$1; shift
  lab_restore
  if ! "$@"; then fail "$name: making the damage"; return 1; fi
  rm -rf "$T/damaged"; cp -a "$S" "$T/damaged"
  Q repair -y --output=json vm1 > "$T/r.json" 2> "$T/r.err"
}

# ---- a snapshot's file deleted: the qcow2 snapshot is adopted ----
repair "parent file deleted" rm "$S/s3.xml"
after "parent file deleted" "ADOPT_SNAPSHOT"
lv "parent file deleted" &&
  { is "$lv_tree" "$tree0" "parent file deleted: libvirt's tree is the original one"
    is "$lv_parents" "$parents0" "parent file deleted: every parent is the original one (s3 a child of s1, chosen by the states)"
    is "$lv_current" e2 "parent file deleted: e2 stays current"; }
ok "the adopted snapshot's <domain> uses the image holding it (a backing file now)" \
  grep -q "<source file='$IMG/vm1.qcow2'/>" "$S/s3.xml"
# libvirt reverts to the adopted snapshot: the disk then reads what
# qemu-img snapshot -a s3 gives
cp "$SAVE/img/vm1.qcow2" "$T/ref.qcow2"
qemu-img snapshot -a s3 "$T/ref.qcow2"
if out=$(V "snapshot-revert vm1 s3" 2>&1); then
  pass "libvirt reverts to the adopted snapshot"
  ok "and the disk then holds s3's data (qemu-img compare with qemu-img snapshot -a)" \
    qemu-img compare -q "$T/ref.qcow2" "$IMG/vm1.qcow2"
else
  fail "libvirt reverts to the adopted snapshot" "$out"
fi

# ---- the file and the qcow2 snapshot gone: its child is reparented ----
repair "parent gone from the metadata and the image" sh -c "rm '$S/s3.xml' && qemu-img snapshot -d s3 '$IMG/vm1.qcow2'"
after "parent gone from the metadata and the image" "REPARENT"
lv "parent gone" &&
  is "$(echo "$lv_parents" | grep '^e1 ')" "e1 s1" "parent gone: e1 is now a child of s1, s3's parent (nearest by the states, not s2, created later)"

# ---- its own parent ----
repair "own parent" sub '/<parent>/,/<\/parent>/ s|<name>s1</name>|<name>s2</name>|' "$S/s2.xml"
after "own parent" "REPARENT"
ok "own parent: s2.xml is libvirt's own file again, byte for byte" cmp "$S/s2.xml" "$SAVE/qemu/snapshot/vm1/s2.xml"
lv "own parent" && is "$lv_tree" "$tree0" "own parent: libvirt's tree is the original one"

# meta check's JSON names the moment and the file a problem is about
lab_restore
sub '/<parent>/,/<\/parent>/ s|<name>s1</name>|<name>s2</name>|' "$S/s2.xml"
Q check vm1 --output=json > "$T/c.json" 2>/dev/null
is "$(jq -r '.problems[] | select(.name == "SELF_PARENT") | .snapshot + " " + .file' "$T/c.json")" "s2 $S/s2.xml" \
  "meta check --output=json: SELF_PARENT carries the snapshot ('s2') and its file"

# ---- a cycle ----
repair "a cycle" sub 's|^  <state>|  <parent>\n    <name>s2</name>\n  </parent>\n  <state>|' "$S/s1.xml"
after "a cycle" "BREAK_CYCLE"
ok "a cycle: s1.xml is libvirt's own file again" cmp "$S/s1.xml" "$SAVE/qemu/snapshot/vm1/s1.xml"
lv "a cycle" && { is "$lv_tree" "$tree0" "a cycle: libvirt's tree is the original one"
                  is "$lv_current" e2 "a cycle: libvirt knows the current snapshot again"; }

# ---- two current: the one the disks use is kept ----
repair "two current" sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml" "$S/e1.xml"
after "two current" "ONE_CURRENT"
for f in s1 e1; do
  ok "two current: $f.xml is libvirt's own file again" cmp "$S/$f.xml" "$SAVE/qemu/snapshot/vm1/$f.xml"
done
lv "two current" && is "$lv_current" e2 "two current: libvirt's current snapshot is e2, whose overlay the domain uses"

# ---- internal snapshots only: the one the disk's state came from ----
lab_restore
V "snapshot-delete vm1 e2 --metadata; snapshot-delete vm1 e1 --metadata" > /dev/null 2>&1
sub "s|$IMG/vm1.e2|$IMG/vm1.qcow2|" "$ROOT/etc/qemu/vm1.xml"
cp "$ROOT/etc/qemu/vm1.xml" "$T/vm1.internal.xml"
# libvirt reverts to s2: the disk's state comes from s2, s2 current
V "define $T/vm1.internal.xml; snapshot-revert vm1 s2" > /dev/null 2>&1
cp "$S/s2.xml" "$T/s2.current"
sub 's|<active>0</active>|<active>1</active>|' "$S/s3.xml"
cp -a "$S" "$T/damaged"
Q repair -y --output=json vm1 > "$T/r.json" 2>&1
is "$(jq -r '[.fixes[] | select(.made) | .name] | join(" ")' "$T/r.json")" ONE_CURRENT "two current, internal: fixed"
lv "two current, internal" &&
  is "$lv_current" s2 "two current, internal: s2 stays current (the disk's active state is closest to s2, not s3 created later)"
ok "two current, internal: s2.xml untouched" cmp "$S/s2.xml" "$T/s2.current"

# ---- a file not named NAME.xml ----
repair "file name" mv "$S/s2.xml" "$S/other.xml"
after "file name" "RENAME_FILE"
ok "file name: renamed back, libvirt's own file" cmp "$S/s2.xml" "$SAVE/qemu/snapshot/vm1/s2.xml"
ok "file name: the old name is gone" test ! -e "$S/other.xml"

# ---- a leftover delete marker, the chain intact ----
mark='/<disks>/,/<\/disks>/ s|<source file=\(.*\)/>|<source file=\1/>\n      <snapshotDeleteInProgress/>|'
repair "delete marker" sub "$mark" "$S/e1.xml"
after "delete marker" "CLEAR_DELETE_MARK"
ok "delete marker: e1.xml is libvirt's own file again" cmp "$S/e1.xml" "$SAVE/qemu/snapshot/vm1/e1.xml"
lv "delete marker"

# ---- a marker where the chain changed: kept ----
lab_restore
sub "$mark" "$S/e1.xml"
qemu-img rebase -q -u -b "$IMG/vm1.qcow2" -F qcow2 "$IMG/vm1.e2"
Q repair -y --output=json vm1 > "$T/r.json" 2>&1
is "$(jq -r '[.fixes[] | select(.name == "CLEAR_DELETE_MARK")] | length' "$T/r.json")" 0 \
  "a delete marker whose chain was changed is not cleared (meta delete's to finish)"

# ---- orphaned metadata: only with --drop-orphaned-metadata ----
lab_restore
qemu-img snapshot -d s3 "$IMG/vm1.qcow2"
Q repair -y --output=json vm1 > "$T/r.json" 2>&1
is "$(jq -r .exit "$T/r.json")" 4 "orphaned snapshot without --drop-orphaned-metadata: left (exit 4)"
ok "its file kept" cmp "$S/s3.xml" "$SAVE/qemu/snapshot/vm1/s3.xml"
rm -rf "$T/damaged"; cp -a "$S" "$T/damaged"
Q repair -y --drop-orphaned-metadata --output=json vm1 > "$T/r.json" 2>&1
after "orphaned snapshot dropped" "DROP_ORPHANED"
ok "orphaned: s3.xml removed" test ! -e "$S/s3.xml"
lv "orphaned" && is "$(echo "$lv_parents" | grep '^e1 ')" "e1 s1" "orphaned: its child e1 is given its parent s1"

# ---- -n changes nothing ----
lab_restore
rm "$S/s3.xml"
sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml"
st0=$(cd "$ROOT/lib/qemu" && find . | sort && find . -type f | sort | xargs sha256sum)
Q repair -n vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 4 "-n: exit 4 (problems left)"
ok "-n: says what it would do" grep -q "adopt it as a child of 's1'.* no$" "$T/out"
is "$(cd "$ROOT/lib/qemu" && find . | sort && find . -type f | sort | xargs sha256sum)" "$st0" "-n: no file or directory changed"
# on a terminal it asks, once per fix (script gives it one)
if have script "meta repair's questions on a terminal (script from util-linux)"; then
  printf 'n\nq\n' | script -qec "qcowkit meta repair --libvirt-root '$ROOT' vm1" /dev/null > "$T/tty.out" 2>&1
  is "$?" 32 "on a terminal, answered n then q: stopped (exit 32)"
  ok "it asked about the adoption ([y/n/a/q])" grep -q "adopt it as a child of 's1'.*\[y/n/a/q\]" "$T/tty.out"
  is "$(cd "$ROOT/lib/qemu" && find . | sort && find . -type f | sort | xargs sha256sum)" "$st0" \
    "answered n and q: no file or directory changed"
  printf 'a\n' | script -qec "qcowkit meta repair --libvirt-root '$ROOT' vm1" /dev/null > "$T/tty.out" 2>&1
  ok "answered a: yes to all, the fixes made" grep -q "Adopted the qcow2 snapshot 's3'." "$T/tty.out"
  lab_restore
  rm "$S/s3.xml"
  sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml"
fi
Q repair -p vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 1 "-p makes the fixes that lose nothing (exit 1)"

# ---- a fault sweep: killed after each operation ----
# Damage needing every kind of write (a backup, a rename, replaced files
# with the current mark moving, a new file); the reference is one
# uninterrupted run.
damage_all () {
  lab_restore
  rm "$S/s3.xml"
  mv "$S/s2.xml" "$S/other.xml"
  sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml"
  sub '/<parent>/,/<\/parent>/ s|<name>s1</name>|<name>s2</name>|' "$S/other.xml"
}
damage_all
Q repair -y vm1 > /dev/null 2>&1
ref=$(cd "$S" && sha256sum * | sort)
n=0 bad=
for op in mkdir write rename unlink; do
  for i in 1 2 3 4 5 6 7 8; do
    damage_all
    QCOWKIT_FAULT=after-$op-$i Q repair -y vm1 > /dev/null 2>&1
    rc=$?
    [ $rc -eq 137 ] || continue   # fewer such operations: not killed
    n=$((n + 1))
    if ! V "snapshot-list vm1 --name" > /dev/null 2>&1; then
      bad="$bad $op-$i:libvirt-load"
    fi
    Q repair -y vm1 > /dev/null 2>&1
    [ "$(cd "$S" && sha256sum * | sort)" = "$ref" ] || bad="$bad $op-$i:rerun"
  done
done
ok "fault sweep: killed at $n points, libvirt loads what each left and a rerun gives the uninterrupted run's files" \
  test -z "$bad" -a "$n" -ge 5
[ -z "$bad" ] || diag "failed points:$bad"

# ---- names that would leave the directory ----
lab_restore
qemu-img snapshot -c '../evil' "$IMG/vm1.qcow2"
qemu-img snapshot -c '.hidden' "$IMG/vm1.qcow2"
Q repair -y --output=json vm1 > "$T/r.json" 2>&1
ok "a qcow2 snapshot named ../evil or .hidden is not adopted" \
  test ! -e "$ROOT/lib/qemu/snapshot/evil.xml" -a ! -e "$S/.hidden.xml" -a "$(jq '[.fixes[] | select(.name == "ADOPT_SNAPSHOT")] | length' "$T/r.json")" = 0
ok "and no file was written outside the snapshot directory" test -z "$(find "$ROOT" -newer "$T/r.json" -name '*evil*')"

# ---- a symlinked per-file directory: refused ----
lab_restore
mv "$S" "$T/elsewhere"
ln -s "$T/elsewhere" "$S"
rm "$T/elsewhere/s3.xml"
st0=$(cd "$T/elsewhere" && sha256sum * | sort)
Q repair -y vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 8 "a per-file directory that is a symlink: refused (exit 8)"
ok "and says why" grep -q "symbolic link" "$T/out"
is "$(cd "$T/elsewhere" && sha256sum * | sort)" "$st0" "and nothing behind the link changed"
rm "$S"; mv "$T/elsewhere" "$S"

# ---- refused while libvirt holds the root ----
lab_restore
rm "$S/s3.xml"
lab_hold_driver
Q repair -y vm1 > "$T/out" 2>&1; rc=$?
is "$rc" 8 "repair refuses while an embedded libvirt runs on the root (exit 8)"
ok "and says why" grep -q "locked by process" "$T/out"
ok "nothing was written" test ! -e "$S/s3.xml"
lab_release_driver
is "$?" 0 "the embedded libvirt quits when told (virsh exits 0)"
done_testing
