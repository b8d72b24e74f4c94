#!/bin/bash
# The metadata loader parses batches of documents on background threads:
# its output must be byte for byte what one thread gives, damage
# included, in both layouts.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq
scratch

R=$T/r
meta_gen "$R" d 2000 per-file chain 4     # ~1.6 MB: parsed in parallel
S=$R/lib/qemu/snapshot/d
mkfifo "$S/s500x.xml"
echo '<domainsnapshot>' > "$S/s700.xml"
sed -i 's|<name>s900</name>|<name> s900</name>|' "$S/s900.xml"
sed -i 's|</creationTime>| </creationTime>|' "$S/s1500.xml"   # libvirt: not a number
mkdir "$S/dir.xml"
for out in "" "--output=json"; do
  QCOWKIT_THREADS=4 qcowkit meta check d --libvirt-root "$R" --no-images $out > "$T/a" 2>&1
  QCOWKIT_THREADS=1 qcowkit meta check d --libvirt-root "$R" --no-images $out > "$T/b" 2>&1
  ok "per-file, damaged, ${out:-human}: 4 threads = 1 thread" cmp -s "$T/a" "$T/b"
done
is "$(jq -r '[.problems[].name] | unique | join(" ")' "$T/b")" \
  "BLOCKING_FILE FILE_NAME MISSING_CTIME MISSING_PARENT NOT_A_FILE PARSE" \
  "... and the damage is all found"
rm -rf "$S/s500x.xml" "$S/dir.xml"
qcowkit meta convert d --libvirt-root "$R" --to bulk --force --no-backup > /dev/null 2>&1 \
  || qcowkit meta convert d --libvirt-root "$R" --to bulk --force > /dev/null
ok "converted to bulk" test -f "$R/lib/qemu/snapshot/d.xml"
sed -i '0,/<creationTime>/s|<creationTime>|<creationTime>x|' "$R/lib/qemu/snapshot/d.xml"
for out in "" "--output=json"; do
  QCOWKIT_THREADS=4 qcowkit meta check d --libvirt-root "$R" --no-images $out > "$T/a" 2>&1
  QCOWKIT_THREADS=1 qcowkit meta check d --libvirt-root "$R" --no-images $out > "$T/b" 2>&1
  ok "bulk, damaged, ${out:-human}: 4 threads = 1 thread" cmp -s "$T/a" "$T/b"
done
QCOWKIT_THREADS=4 qcowkit meta tree d --libvirt-root "$R" --output=json > "$T/a"
QCOWKIT_THREADS=1 qcowkit meta tree d --libvirt-root "$R" --output=json > "$T/b"
ok "bulk: meta tree, 4 threads = 1 thread" cmp -s "$T/a" "$T/b"
done_testing
