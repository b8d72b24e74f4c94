#!/bin/bash
# Issue #9: hostile metadata under a root never makes qcowkit read, block
# on, change or delete anything outside it. Each case runs with a
# sentinel tree outside the root whose sha256 must not change, under
# timeout and ulimit -v, and the writers under strace: every mutating
# system call must name a place inside the root.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq strace
scratch

R=$T/root
OUT=$T/outside            # the sentinel: never touched
mkdir -p "$OUT/dir"
for i in 1 2 3; do echo "precious $i" > "$OUT/dir/f$i.xml"; done
echo "not xml" > "$OUT/dir/notes.txt"
sentinel () { (cd "$OUT" && find . -printf '%p %y %s\n' | sort; cat dir/*) | sha256sum; }
SENT=$(sentinel)
sentinel_ok () { is "$(sentinel)" "$SENT" "$1: nothing outside the root changed"; }

S=$R/lib/qemu/snapshot
fresh () { rm -rf "$R"; meta_gen "$R" d 4 "${1:-per-file}" chain; }
Q () { timeout 60 qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }

# traced COMMAND...: run under strace; every mutating call inside $1's root
traced () {
  local root=$1; shift
  traced_env strace -f -y -qq -o "$T/strace" \
    -e trace=unlink,unlinkat,rename,renameat,renameat2,mkdir,mkdirat,rmdir,link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,fchownat,open,openat,openat2,creat \
    "$@" > "$T/out" 2>&1
  local rc=$?
  # opens that cannot write do not count; the program's own binaries,
  # libraries and /dev/null are not in the root
  grep -vE 'O_RDONLY[^W]*\)|O_PATH|= -1 |^[0-9]+ \+\+\+|^[0-9]+ ---' "$T/strace" \
    | grep -E 'unlink|rename|mkdir|rmdir|link|chmod|chown|truncate|O_WRONLY|O_RDWR|O_CREAT|creat\(' \
    | grep -v -- "$root" > "$T/outside-calls"
  return $rc
}
no_outside_calls () {
  if [ -s "$T/outside-calls" ]; then
    fail "$1: no mutating call outside the root" "$(head -5 "$T/outside-calls")"
  else
    pass "$1: no mutating call outside the root (strace)"
  fi
}

# ---- 1. a leftover name that is a symlink to an outside directory ----
for name in .d.qk-new .d.qk-old .d.xml.qk-new .d.qk-stage; do
  for to in bulk per-file; do
    fresh per-file
    [ $to = per-file ] && Q convert d --to bulk --no-backup >/dev/null 2>&1
    ln -s "$OUT/dir" "$S/$name"
    traced "$R" qcowkit meta convert d --libvirt-root "$R" --to $to --no-backup
    rc=$?
    ok "$name -> outside, convert --to $to: refused (exit $rc)" test $rc -ne 0
    case $name in
      .d.qk-stage) want='not made by qcowkit' ;;
      *) want='earlier qcowkit' ;;
    esac
    if grep -q "$want" "$T/out"; then pass "... saying '$want'"
    else fail "... saying '$want'" "$(cat "$T/out")"; fi
    ok "... the link is still there" test -L "$S/$name"
    no_outside_calls "$name, --to $to"
    sentinel_ok "$name, --to $to"
  done
done

# a staging directory with something that is not ours in it
fresh per-file
mkdir "$S/.d.qk-stage"; echo mine > "$S/.d.qk-stage/keep.txt"
Q convert d --to bulk > "$T/out" 2>&1
ok "a staging directory with someone's file in it: refused" test $? -ne 0
is "$(cat "$S/.d.qk-stage/keep.txt" 2>/dev/null)" mine "... the file is kept"

# an empty staging directory (killed right after mkdir): ours, removed
fresh per-file
mkdir "$S/.d.qk-stage"
ok "an empty staging directory is cleaned up and the conversion runs" \
  Q convert d --to bulk
ok "... and it is gone" test ! -e "$S/.d.qk-stage"

# ---- 2. --sysroot: a symlinked snapshot directory stays in the sysroot ----
SYS=$T/sys
rm -rf "$SYS"
meta_gen "$SYS/real" d 4 per-file chain
mkdir -p "$SYS/etc/libvirt/qemu" "$SYS/var/lib/libvirt/qemu"
cp "$SYS/real/etc/qemu/d.xml" "$SYS/etc/libvirt/qemu/"
# an absolute link that names a directory that exists on this host too
mkdir -p "$OUT/snap/d"; echo "precious" > "$OUT/snap/d/x.xml"
SENT=$(sentinel)
mkdir -p "$SYS$OUT"
mv "$SYS/real/lib/qemu/snapshot" "$SYS$OUT/snap"
ln -s "$OUT/snap" "$SYS/var/lib/libvirt/qemu/snapshot"
timeout 60 qcowkit meta check --sysroot "$SYS" d --no-images --output=json > "$T/c.json"
is "$(jq -r '.snapshots.count' "$T/c.json")" 4 "--sysroot: the symlinked snapshot directory is read inside the sysroot"
traced "$SYS" qcowkit meta convert --sysroot "$SYS" d --to bulk --no-backup
ok "--sysroot: convert through an absolute link succeeds" test $? -eq 0
ok "... writing the bulk file inside the sysroot" test -f "$SYS$OUT/snap/d.xml"
ok "... not on the host" test ! -e "$OUT/snap/d.xml"
no_outside_calls "--sysroot convert"
sentinel_ok "--sysroot convert"

# ---- 3. snapshot/d itself a symlink to an outside directory ----
fresh per-file
rm -rf "$S/d"
cp -r "$OUT/dir" "$T/victim"
ln -s "$T/victim" "$S/d"
VSUM=$( (cd "$T/victim" && sha256sum -- *) )
traced "$R" qcowkit meta convert d --libvirt-root "$R" --to bulk --force --no-backup
ok "snapshot/d -> outside: convert --force --no-backup refused" test $? -ne 0
grep -q "symbolic link" "$T/out" && pass "... saying it is a symbolic link" \
  || fail "... saying it is a symbolic link" "$(cat "$T/out")"
is "$( (cd "$T/victim" && sha256sum -- *) )" "$VSUM" "... every file there is kept"
no_outside_calls "symlinked snapshot/d"
sentinel_ok "symlinked snapshot/d"

# --no-backup with a file that is not metadata in the directory
fresh per-file
echo "notes" > "$S/d/README"
Q convert d --to bulk --force --no-backup > "$T/out" 2>&1
ok "--no-backup with a non-metadata file in the directory: refused" test $? -ne 0
ok "... the directory and its files are kept" test -f "$S/d/README" -a -f "$S/d/s0.xml"
ok "... nothing was written" test ! -e "$S/d.xml" -a ! -e "$S/.d.qk-stage"

# ---- 4. FIFOs and devices never block ----
fresh per-file
rm "$R/etc/qemu/d.xml"; mkfifo "$R/etc/qemu/d.xml"
for sub in check tree; do
  Q $sub d --no-images --output=json > "$T/o.json" 2>/dev/null
  rc=$?
  ok "a FIFO domain definition: meta $sub does not block (exit $rc)" test $rc -ne 124
done
jq -r '.problems[] | select(.name == "NO_DOMAIN") | .message' "$T/o.json" > /dev/null
Q check d --no-images --output=json > "$T/o.json"
case $(jq -r '.problems[] | select(.name == "NO_DOMAIN") | .message' "$T/o.json") in
  *FIFO*) pass "... and says it is a FIFO" ;;
  *) fail "... and says it is a FIFO" "$(cat "$T/o.json")" ;;
esac
Q convert d --to bulk > /dev/null 2>&1
ok "a FIFO domain definition: convert does not block" test $? -ne 124

fresh bulk
rm "$S/d.xml"; mkfifo "$S/d.xml"
Q check d --no-images --output=json > "$T/o.json"
rc=$?
ok "a FIFO bulk file: check does not block" test $rc -ne 124
is "$(problems "$T/o.json")" "BLOCKING_FILE" "... and reports BLOCKING_FILE"
rm "$S/d.xml"; ln -s /dev/zero "$S/d.xml"
Q check d --no-images --output=json > "$T/o.json"
is "$(problems "$T/o.json")" "BLOCKING_FILE" "a bulk file linked to /dev/zero: BLOCKING_FILE"

# ---- 14. a FIFO in the per-file directory: libvirt would hang ----
fresh per-file
mkfifo "$S/d/hang.xml"
Q check d --no-images --output=json > "$T/o.json"
rc=$?
is "$rc $(problems "$T/o.json")" "2 BLOCKING_FILE" "a FIFO among the snapshot files: an error (exit 2), BLOCKING_FILE"

# ---- 6. every buffer of the bulk reader is bounded ----
fresh bulk
# a sparse 2 GiB comment: NUL bytes are not XML, and it stops there
{ head -c 200 "$S/d.xml"; } > "$T/head"
printf '<snapshots>\n<!--' > "$S/d.xml"
truncate -s 2G "$S/d.xml"
printf -- '-->\n</snapshots>\n' >> "$S/d.xml"
vlimited 400000 Q check d --no-images --output=json > "$T/o.json"
rc=$?
ok "a 2 GiB sparse comment: done under 400 MB of address space (exit $rc)" test $rc -ne 124 -a -s "$T/o.json"
case $(jq -r '.problems[].message' "$T/o.json") in
  *"NUL byte"*) pass "... reported as a NUL byte, not XML" ;;
  *) fail "... reported as a NUL byte, not XML" "$(cat "$T/o.json")" ;;
esac
# a 64 MiB comment, a 40 MiB attribute: memory stays near the 16 MiB limit
fresh bulk
sed -i 's|<snapshots|<!-- PAD --><snapshots|' "$S/d.xml"
python3 - "$S/d.xml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("PAD", "x" * (64 << 20), 1)
s = s.replace("<domainsnapshot>", "<domainsnapshot><description a='%s'/>" % ("y" * (40 << 20)), 1)
open(p, "w").write(s)
PY
vlimited 300000 Q check d --no-images --output=json > "$T/o.json"
rc=$?
ok "a 64 MiB comment and a 40 MiB attribute: done under 300 MB (exit $rc)" test -s "$T/o.json"
is "$(problems "$T/o.json")" "MISSING_PARENT TOO_LARGE" \
  "... the element with the attribute is TOO_LARGE (so s1 lost its parent), the comment is fine"
rm -f "$S/d.xml"

# ---- 13. names with a newline or a tab convert both ways ----
fresh per-file
name=$'nl\nname\tx'
sed 's|<name>s3</name>|<name>nl\nname\tx</name>|' "$S/d/s3.xml" > "$S/d/$name.xml"
rm "$S/d/s3.xml"
before=$(Q tree d --output=json | jq -c '[.snapshots.current, (.snapshots.moments | map(.name))]')
ok "a name with a newline and a tab: convert --to bulk" Q convert d --to bulk --no-backup
is "$(Q tree d --output=json | jq -c '[.snapshots.current, (.snapshots.moments | map(.name))]')" \
  "$before" "... reads back with the same current and names"
grep -q "current='nl&#10;name&#9;x'" "$S/d.xml" && pass "... current= holds character references" \
  || fail "... current= holds character references" "$(grep current= "$S/d.xml")"
ok "... and back to per-file" Q convert d --to per-file --no-backup
ok "... into a file of that name" test -f "$S/d/$name.xml"

# ---- 7. C1 controls and bytes that are not UTF-8 never reach the terminal ----
fresh per-file
printf -v c1name 'c1\xc2\x9b31m-\xc3\xa9'      # U+009B (CSI) is an XML character
printf -v badfile 'x\x9b31m.xml'                  # not UTF-8: a file name only
sed "s|<name>s3</name>|<name>$c1name</name>|" "$S/d/s3.xml" > "$S/d/$c1name.xml"
rm "$S/d/s3.xml"
echo '<domainsnapshot>' > "$S/d/$badfile"
Q tree d > "$T/tree.out" 2>&1
Q check d --no-images > "$T/check.out" 2>&1
if LC_ALL=C grep -q $'\xc2\x9b\|\x9b' "$T/tree.out" "$T/check.out"; then
  fail "U+009B (CSI) in a name, 0x9b in a file name: never printed raw" \
    "$(cat -v "$T/tree.out" "$T/check.out")"
else
  pass "U+009B (CSI) in a name, 0x9b in a file name: never printed raw"
fi
grep -q 'c1\\xc2\\x9b31m-é' "$T/tree.out" && pass "... the name as \\xNN, and UTF-8 (é) passes" \
  || fail "... the name as \\xNN, and UTF-8 (é) passes" "$(cat -v "$T/tree.out")"
grep -q 'x\\x9b31m.xml' "$T/check.out" && pass "... the file name as \\xNN" \
  || fail "... the file name as \\xNN" "$(cat -v "$T/check.out")"

# ---- 15. a failed conversion removes what it made, and says so ----
fresh bulk
long=$(printf 'n%.0s' $(seq 300))
sed -i "s|<name>s3</name>|<name>$long</name>|; s|current='s3'|current='$long'|" "$S/d.xml"
SUM=$(sha256sum < "$S/d.xml")
Q convert d --to per-file > "$T/out" 2>&1
ok "a 300-byte name: convert --to per-file fails" test $? -ne 0
grep -q "partial new one was removed" "$T/out" && pass "... saying the partial layout was removed" \
  || fail "... saying the partial layout was removed" "$(cat "$T/out")"
ok "... nothing is left behind" test -z "$(ls -A "$S" | grep -v '^d.xml$')"
is "$(sha256sum < "$S/d.xml")" "$SUM" "... the bulk file is untouched"

sentinel_ok "the whole test"
done_testing
