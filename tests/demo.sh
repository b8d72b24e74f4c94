#!/bin/bash
# The quick-start demo (tests/demo-run.sh) must do what it says: QEMU
# refuses the damaged image (checked again here with qemu-img itself), and
# qcowkit recovers the guest data byte for byte (compared here with the
# raw image qemu-img wrote before the damage), maps it as qemu-img does
# once qemu-img has repaired a copy, and names the specific problems with
# their codes and exit statuses. The metadata part is checked against the
# internal snapshots qemu-img lists in the image.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq
scratch
out=$(QCOWKIT_DEMO_DIR=$T bash "$srcdir/tests/demo-run.sh" 2>&1)
rc=$?
is "$rc" 0 "demo exits 0"
[ $rc -eq 0 ] || diag "$(tail -n 20 <<< "$out")"
cd "$T" || exit 1

# has DESC STRING: the demo's output holds STRING, as it is
has () {
  if grep -qF -- "$2" <<< "$out"; then pass "$1"
  else fail "$1" "no line with: $2"; fi
}

# ---- 3. QEMU refuses the image: asked again, directly ----
refusal="Could not open 'vm.qcow2': Too much extra metadata in snapshot table entry 0"
for c in info convert; do
  if [ "$c" = info ]; then qemu-img info vm.qcow2 > /dev/null 2> "$T/q.err"
  else qemu-img convert -O raw vm.qcow2 "$T/q.raw" 2> "$T/q.err"; fi
  is "$? $(head -n 1 "$T/q.err")" "1 qemu-img: $refusal" \
    "qemu-img $c refuses the damaged image (exit 1, too much extra metadata)"
  has "the demo shows qemu-img $c's refusal and exit 1" "(qemu-img $c: exit 1)"
done
has "the demo shows qemu-img's message" "qemu-img: $refusal"
is "$(qemu-img check vm.qcow2 > /dev/null 2> "$T/q.err"; echo $?) $(tr '\n' ' ' < "$T/q.err")" \
  "1 qemu-img: ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry 0 You can force-remove this extra metadata with qemu-img check -r all qemu-img: Check failed: File too large " \
  "qemu-img check cannot check it either (exit 1, Check failed)"

# ---- 4. qcowkit info reads it and says what is wrong ----
qcowkit info --output=json vm.qcow2 > "$T/info.json" 2> "$T/info.err"
is "$? $(jq -c '[."format-specific".data.corrupt, ."dirty-flag", ."virtual-size", (.snapshots | length)]' "$T/info.json")" \
  "0 [true,true,67108864,1]" \
  "qcowkit info exits 0: corrupt, dirty, 64 MiB, one snapshot"
has "qcowkit info names the corrupt bit" "incompatible features: dirty bit (bit 0), corrupt bit (bit 1)"
has "qcowkit info warns about the 2000 bytes of extra data" \
  "snapshot table entry 0 has 2000 bytes of extra data (QEMU refuses more than 1024 and will not open the image)"

# ---- 5. the recovered data, byte for byte ----
ok "recovered.raw is qemu-img's raw image from before the damage (cmp)" \
  cmp expected.raw recovered.raw
is "$(stat -c %s recovered.raw)" 67108864 "recovered.raw is the whole 64 MiB disk"
has "the demo says the data was recovered" \
  "recovered.raw is byte-identical to the guest data before the damage"
# qemu-img repairs a copy (it drops the bad extra data); the active
# layer's mapping does not change, so its map is the oracle for ours
cp vm.qcow2 fixed.qcow2
qemu-img check -q -r all fixed.qcow2 > /dev/null 2>&1
qemu-img map --output=json fixed.qcow2 > "$T/qmap.json" 2> "$T/qmap.err"
is "$?" 0 "qemu-img maps the copy it repaired"
qcowkit map --output=json vm.qcow2 > "$T/omap.json" 2> /dev/null
is "$?" 0 "qcowkit map reads the damaged image"
is "$(jq -c . "$T/omap.json")" "$(jq -c . "$T/qmap.json")" \
  "qcowkit map of the damaged image is qemu-img map of the repaired copy"

# ---- 6. qcowkit check: the problems, each with its code ----
has "qcowkit check warns about the dirty bit (0x000001)" "Warning 0x000001: the dirty bit is set"
has "qcowkit check warns about the corrupt bit (0x000002)" "Warning 0x000002: the corrupt bit is set"
has "qcowkit check reports the snapshot entry (ERROR 0x020003)" \
  "ERROR 0x020003: snapshot table entry 0 has too much extra metadata (2000 > 1024)"
has "qcowkit check counts one error" "1 errors were found on the image."
has "qcowkit check exits 2 (corruptions)" "(qcowkit check: exit 2,"
qcowkit check --output=json vm.qcow2 > "$T/check.json" 2> /dev/null
is "$? $(jq -c '[.corruptions, .leaks // 0, ([.problems[].code] | join(" "))]' "$T/check.json")" \
  '2 [1,0,"0x000001 0x000002 0x020003"]' \
  "qcowkit check --output=json: exit 2, one corruption, no leak, codes 0x000001 0x000002 0x020003"

# ---- 7. repair: qemu-img's drops the snapshot, ours keeps it ----
is "$(qemu-img snapshot -l qemu-repaired.qcow2 | wc -l)" 0 \
  "qemu-img check -r all left no snapshot in its copy (the oracle's behaviour the demo shows)"
has "the demo says so" "(no snapshot left: qemu-img dropped 'before-upgrade'"
has "qcowkit repair corrects the size field (fix 0x20000b)" \
  "Corrected the extra data size of snapshot table entry 0 (24 bytes, not 2000)."
has "qcowkit repair clears the dirty and corrupt bits" "Cleared the corrupt bit."
has "qcowkit repair exits 1 (fixed)" "(qcowkit repair: exit 1: 1 means fixed)"
qemu-img check vm-repaired.qcow2 > /dev/null 2>&1
is "$?" 0 "qemu-img check finds qcowkit's repair clean"
is "$(qemu-img snapshot -l vm-repaired.qcow2 | awk 'NR > 2 {print $2}')" before-upgrade \
  "qemu-img lists the snapshot 'before-upgrade' after qcowkit's repair"
ok "the active guest data after the repair is qemu-img's raw image from before the damage" \
  qemu-img compare -q -f raw -F qcow2 expected.raw vm-repaired.qcow2
qemu-img convert -l snapshot.name=before-upgrade -O raw vm-repaired.qcow2 "$T/snap-q.raw" 2> /dev/null
is "$?" 0 "qemu-img reads the snapshot of the repaired image"
ok "and its data is the snapshot's from before the damage (qemu-img convert then and now)" \
  cmp "$T/snap-q.raw" expected-snap.raw
ok "qcowkit undo put back the damaged image byte for byte (cmp)" cmp vm.qcow2 damaged.qcow2

# ---- 9. the libvirt metadata ----
# The oracle for the image side: the internal snapshots qemu-img lists
is "$(qemu-img snapshot -l web.qcow2 | awk 'NR > 2 {print $2}' | tr '\n' ' ')" \
  "s1 s2 manual " "qemu-img lists s1, s2 and manual in web.qcow2 (no s3)"
has "qcowkit meta check: s3's parent is missing (0x10000c)" \
  "ERROR 0x10000c MISSING_PARENT: snapshot 's3' (libvirt/lib/qemu/snapshot/web/s3.xml) names parent 's-gone', which does not exist"
has "qcowkit meta check: two current snapshots (0x10000f)" \
  "ERROR 0x10000f MULTIPLE_CURRENT: 2 snapshots claim to be current ('s2', 's3')"
has "qcowkit meta check: s3 is not in the image (0x110002)" \
  "ERROR 0x110002 INT_SNAPSHOT_MISSING: snapshot 's3', disk 'vda': $T/web.qcow2 has no internal snapshot of that name"
has "qcowkit meta check: 'manual' is not in libvirt's metadata (0x110004)" \
  "Warning 0x110004 INT_SNAPSHOT_UNKNOWN: $T/web.qcow2: internal snapshot 'manual' (id 3) is not in libvirt's metadata"
has "qcowkit meta check counts 3 errors and 1 warning" \
  "3 errors, 0 check failures, 1 warnings, 0 notes."
has "qcowkit meta check exits 2" "(qcowkit meta check: exit 2)"
has "qcowkit meta tree shows s3 apart, with its missing parent" \
  "s3 (parent 's-gone' does not exist)"

# ---- 10. meta repair ----
has "meta repair adopts 'manual' as a child of s2 (fix 0x210007)" \
  "Adopted the qcow2 snapshot 'manual'."
has "meta repair removes s3, whose data is gone" "Removed the metadata of the snapshot 's3'."
has "meta repair shows the new file as a diff" "+++ libvirt/lib/qemu/snapshot/web/manual.xml"
has "meta repair exits 1 (fixed, now clean)" "(qcowkit meta repair: exit 1: 1 means fixed and now clean)"
has "meta repair's summary: 2 fixes, 0 errors left" "2 fixes made, 0 errors left"
has "meta check afterwards: no error, no warning (a note: s2 current with a child)" \
  "0 errors, 0 check failures, 0 warnings, 1 notes."
after10=$(sed -n '/== 10\./,$p' <<< "$out")
tree_after=$(sed -n '/^\$ qcowkit meta tree/,/^\$ qcowkit meta check/p' <<< "$after10" | sed '1d;$d' | sed '/^ *$/d')
is "$tree_after" "s1
  |
  +- s2
      |
      +- manual" "the repaired tree (meta tree): s1 <- s2 <- manual"
ok "s3.xml is kept in the backup directory, byte for byte what it was" \
  test -s libvirt/lib/qemu/snapshot/.web.qk-repair.1/s3.xml -a ! -e libvirt/lib/qemu/snapshot/web/s3.xml
# ---- 11. audit of the demo host ----
has "audit: the worst verdict is the exit status (2, corrupt)" \
  "(qcowkit audit: exit 2: the worst verdict, 2 corrupt)"
has "audit's summary: one image clean, one corrupt" \
  "2 domains, 2 disks, 2 images: 1 clean, 0 with leaks, 0 in use, 0 with errors, 1 corrupt."
qcowkit audit --libvirt-root libvirt --output=jsonl > "$T/audit.jsonl"
is "$(jq -r 'select(.type == "image") | "\(.domain) \(.verdict) \(.corruptions) \(.leaks)"' "$T/audit.jsonl" | sort | tr '\n' ' ')" \
  "vm corrupt 1 0 web clean 0 0 " "audit's image records: vm corrupt (1 corruption), web clean"
qemu-img check --output=json web.qcow2 > "$T/web.json" 2>/dev/null
is "$? $(jq -r '"\(.corruptions // 0) \(.leaks // 0)"' "$T/web.json")" "0 0 0" \
  "  qemu-img check agrees on web.qcow2: clean"
qcowkit check --output=json vm.qcow2 > "$T/vm.json" 2>/dev/null
is "$(jq -r '"\(.corruptions // 0) \(.leaks // 0)"' "$T/vm.json")" "1 0" \
  "  vm.qcow2's counts are qcowkit check's (qemu-img check refuses it, asserted in step 3)"
has "audit names the garbled snapshot entry, not an empty name" \
  "internal snapshot entry 0 has an empty name, which no libvirt snapshot can have"
if have virsh; then
  V () { timeout 120 virsh -q -c "qemu:///embed?root=$T/libvirt" "$@"; }
  printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' > libvirt/etc/qemu.conf
  out=$(V "snapshot-list web --parent; snapshot-current web --name" 2>&1)
  is "$(echo "$out" | awk 'NF >= 5 { print $1 (NF >= 6 ? " " $6 : "") } NF == 1' | sort | tr '\n' ' ')" \
    "manual s2 s1 s2 s2 s1 " "a real libvirt loads the repaired metadata: manual <- s2 <- s1, s2 current"
fi
done_testing
