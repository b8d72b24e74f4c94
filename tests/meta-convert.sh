#!/bin/bash
# qcowkit meta convert is crash-safe: killed right after every write,
# fsync, rename, unlink, mkdir and rmdir it does (QCOWKIT_FAULT), a re-run
# completes the conversion (or, asked for the old layout, rolls it back),
# and the result always holds exactly the original snapshots, parents and
# current snapshot, byte for byte. Also: refusals, backups, --force.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq
scratch

Q () { qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }
# digest: what must survive a conversion, independent of the layout
digest () {
  Q tree --output=json --kind all d | jq -c '[.snapshots.current, .checkpoints.current,
    (.snapshots.moments | map([.name, .parent])), (.checkpoints.moments | map([.name, .parent]))]'
}
# the files of the per-file layout, for byte comparison
snapsum () { (cd "$R/lib/qemu/snapshot/d" && sha256sum -- * | sort); }

R=$T/r
meta_gen "$R" d 9 per-file binary 2
meta_gen "$R" d 3 per-file chain 0 checkpoint
want=$(digest)
wantsum=$(snapsum)
ok "the generated domain checks clean" Q check d --no-images

# one full round trip first
ok "convert --to bulk" Q convert d --to bulk
is "$(digest)" "$want" "bulk holds the same moments, parents and current"
ok "convert --to per-file" Q convert d --to per-file --no-backup
is "$(snapsum)" "$wantsum" "per-file again: byte for byte the original files"
rm -rf "$R"/lib/qemu/*/.d.*

layout () {
  local s=$R/lib/qemu/snapshot
  if [ -d "$s/d" ] && [ -f "$s/d.xml" ]; then echo both
  elif [ -d "$s/d" ]; then echo per-file
  elif [ -f "$s/d.xml" ]; then echo bulk
  else echo none; fi
}

# kill after the Nth OP, for every N until the conversion runs through
crash_loop () {  # FROM TO OP EXTRA-OPTS
  local from=$1 to=$2 op=$3 n=1 kills=0 bad=0 rc
  Q convert d --to "$from" --no-backup > /dev/null 2>&1
  rm -rf "$R"/lib/qemu/*/.d.*
  while [ $n -le 64 ]; do
    QCOWKIT_FAULT=after-$op-$n Q convert d --to "$to" $4 > "$T/out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then break; fi
    if [ $rc -ne 137 ]; then bad=1; diag "$op-$n: exit $rc: $(cat "$T/out")"; break; fi
    kills=$((kills + 1))
    # the interrupted state still holds everything, in one layout or both
    # (a re-run completes it)
    if ! Q convert d --to "$to" $4 > "$T/out" 2>&1; then
      bad=1; diag "re-run after $op-$n failed: $(cat "$T/out")"; break
    fi
    if [ "$(layout)" != "$to" ] || [ "$(digest)" != "$want" ]; then
      bad=1; diag "after $op-$n and a re-run: layout $(layout)"; break
    fi
    if [ "$to" = per-file ] && [ "$(snapsum)" != "$wantsum" ]; then
      bad=1; diag "after $op-$n: the files differ"; break
    fi
    ls -a "$R/lib/qemu/snapshot" | grep -q 'qk-new\|qk-old\|qk-stage' && { bad=1; diag "$op-$n: temporaries left"; break; }
    # back to the starting layout for the next N
    Q convert d --to "$from" --no-backup > /dev/null 2>&1 || { bad=1; diag "cannot go back"; break; }
    rm -rf "$R"/lib/qemu/*/.d.*
    n=$((n + 1))
  done
  ok "$from -> $to $4: killed after each of $kills ${op}s, a re-run completes it" test $bad -eq 0 -a $kills -gt 0
  rm -rf "$R"/lib/qemu/*/.d.*
}
for op in write fsync rename unlink; do
  crash_loop per-file bulk $op --no-backup
done
for op in write fsync rename mkdir; do
  crash_loop bulk per-file $op
done
crash_loop bulk per-file unlink --no-backup
crash_loop per-file bulk rmdir --no-backup
crash_loop per-file bulk rename
Q convert d --to per-file --no-backup > /dev/null 2>&1
rm -rf "$R"/lib/qemu/*/.d.*

# killed before the commit point, then asked for the old layout: rolls back
# (fsyncs: the staging marker, its directory, KIND/, then the bulk file)
QCOWKIT_FAULT=after-fsync-4 Q convert d --to bulk > /dev/null 2>&1
is "$?" 137 "killed after writing the bulk file, before the rename"
ok "a temporary is left" test -e "$R/lib/qemu/snapshot/.d.qk-stage/new.xml"
Q check d --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "LEFTOVER_TEMPORARY" "meta check reports the leftover temporary"
ok "convert --to per-file rolls back" Q convert d --to per-file
ok "no temporary is left" test ! -e "$R/lib/qemu/snapshot/.d.qk-stage"
is "$(layout) $(snapsum | sha256sum)" "per-file $(echo "$wantsum" | sha256sum)" "the per-file layout is untouched"

# killed right after the commit rename: both layouts, equal
QCOWKIT_FAULT=after-rename-1 Q convert d --to bulk > /dev/null 2>&1
is "$(layout)" both "killed after the commit: both layouts exist"
Q check d --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json")" "BOTH_LAYOUTS LEFTOVER_TEMPORARY" \
  "meta check reports both layouts (and the staging directory)"
ok "convert --to per-file completes towards per-file" Q convert d --to per-file
is "$(layout) $(digest)" "per-file $want" "per-file, same content"
rm -rf "$R"/lib/qemu/*/.d.*

# both layouts that differ: refused
Q convert d --to bulk > /dev/null
Q convert d --to per-file > /dev/null
mv "$R/lib/qemu/snapshot/.d.bulk.qk-backup" "$R/lib/qemu/snapshot/d.xml"
sed -i 's|<name>s3</name>|<name>s3x</name>|' "$R/lib/qemu/snapshot/d.xml"
Q convert d --to bulk > "$T/out" 2>&1; rc=$?
is "$rc" 1 "both layouts differing: convert refuses"
ok "and says so" grep -q "exist and differ" "$T/out"
rm -f "$R/lib/qemu/snapshot/d.xml"
rm -rf "$R"/lib/qemu/*/.d.*

# backups accumulate with new names
Q convert d --to bulk > /dev/null && Q convert d --to per-file > /dev/null &&
  Q convert d --to bulk > /dev/null
ok "a second backup gets a new name" test -d "$R/lib/qemu/snapshot/.d.per-file.qk-backup.1"
Q convert d --to per-file --no-backup > /dev/null
rm -rf "$R"/lib/qemu/*/.d.*

# problems: refused unless --force, which leaves the bad file behind
printf '<domainsnapshot><name>broken' > "$R/lib/qemu/snapshot/d/broken.xml"
Q convert d --to bulk --kind snapshot > "$T/out" 2>&1; rc=$?
is "$rc" 1 "convert refuses when a file would be lost"
ok "and names --force" grep -q -- "--force" "$T/out"
is "$(layout)" per-file "nothing changed"
ok "convert --force converts what it can" Q convert d --to bulk --kind snapshot --force
is "$(digest)" "$want" "the readable snapshots are all there"
ok "the unreadable file stays in the backup" test -f "$R/lib/qemu/snapshot/.d.per-file.qk-backup/broken.xml"

# seed 002's collision: domain foo's bulk file is snapshot/foo.xml, the
# per-file directory of a domain named foo.xml
R=$T/col
meta_gen "$R" foo 3 per-file chain
meta_gen "$R" foo.xml 5 per-file binary
Q check foo --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json") $(jq -r '.snapshots.layout + " " + (.snapshots.count|tostring)' "$T/c.json")" \
  "LAYOUT_COLLISION per-file 3" "foo: snapshot/foo.xml/ is not its bulk file (a note), foo/ is read"
Q check foo.xml --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json") $(jq -r '.snapshots.layout + " " + (.snapshots.count|tostring)' "$T/c.json")" \
  " per-file 5" "foo.xml: its per-file directory foo.xml/"
Q convert foo --to bulk > "$T/out" 2>&1; rc=$?
is "$rc" 1 "foo cannot go bulk while foo.xml/ is there"
ok "and is told why" grep -q "per-file metadata of a domain named 'foo.xml'" "$T/out"
ok "foo.xml goes bulk (foo.xml.xml)" sh -c "qcowkit meta convert --libvirt-root '$R' foo.xml --to bulk --no-backup > /dev/null"
ok "then foo goes bulk (foo.xml)" sh -c "qcowkit meta convert --libvirt-root '$R' foo --to bulk --no-backup > /dev/null"
ok "snapshot/foo.xml is a file, snapshot/foo.xml.xml too" \
  test -f "$R/lib/qemu/snapshot/foo.xml" -a -f "$R/lib/qemu/snapshot/foo.xml.xml"
Q check foo --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json") $(jq -r '.snapshots.layout + " " + (.snapshots.count|tostring)' "$T/c.json")" \
  " bulk 3" "foo reads its bulk file"
Q check foo.xml --no-images --output=json > "$T/c.json"
is "$(problems "$T/c.json") $(jq -r '.snapshots.layout + " " + (.snapshots.count|tostring)' "$T/c.json")" \
  " bulk 5" "foo.xml reads its bulk file foo.xml.xml"
R=$T/r

# more than 16 files are flushed with one syncfs: interrupt that path too
R=$T/r20
meta_gen "$R" d 20 per-file chain 0
want=$(digest)
wantsum=$(snapsum)
crash_loop per-file bulk fsync --no-backup
crash_loop bulk per-file fsync
crash_loop bulk per-file write
R=$T/r

# JSON output of convert
Q convert d --to per-file --output=json > "$T/c.json"
is "$(jq -r '.snapshots.from + ">" + .snapshots.layout + " " + (.ok|tostring)' "$T/c.json")" "bulk>per-file true" "convert --output=json"
done_testing
