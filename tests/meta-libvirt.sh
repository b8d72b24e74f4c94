#!/bin/bash
# End to end with a real libvirt (embedded QEMU driver, no daemon): libvirt
# writes snapshot and checkpoint metadata (internal snapshots with a branch
# from a revert, external snapshots, checkpoints on a running domain);
# qcowkit meta check finds it clean and agrees with virsh's tree; then each
# kind of damage, made to files and images, gives exactly the expected
# problems, and libvirt is the oracle for what qcowkit says libvirt does
# with it: a fresh libvirt loads the damaged metadata and its view (which
# snapshots and checkpoints, their times, states and parents, its roots,
# its trees, its current snapshot, what it logs while loading) must be
# qcowkit's (lv_view); where a problem's description says libvirt refuses
# or does an operation (revert, redefine, delete, make current, an
# incremental backup, starting the domain), libvirt is asked to do it
# (claim). Convert to bulk and back leaves what a fresh virsh shows
# unchanged; convert refuses while libvirt holds the location.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img jq qemu-system-x86_64 qkpoke
scratch

ROOT=$T/root
IMG=$T/img
lab_init

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
lab_save
S=$ROOT/lib/qemu/snapshot/vm1
C=$ROOT/lib/qemu/checkpoint/vm1
# case NAME "EXPECTED PROBLEMS" COMMAND...
case_ () {
  local name=$1 want=$2; shift 2
  lab_restore
  if ! "$@"; then fail "$name: making the damage"; return; fi
  Q check vm1 --output=json > "$T/case.json" 2>"$T/case.err"
  local got; got=$(problems "$T/case.json")
  is "$got" "$want" "$name"
  if [ "$got" != "$want" ]; then
    jq -r '.problems[] | "#   " + .name + ": " + .message' "$T/case.json"
  fi
  lv_view "$name"
}
# lv_view NAME: a fresh libvirt (a new virsh process) loads the same
# damaged files. What it does is asked of it, next to what qcowkit says it
# does (meta tree --output=json, and the human meta tree, whose first part
# is libvirt's tree; meta check's problems):
#   - that it loads the domain's metadata at all;
#   - the snapshots and checkpoints it keeps, and its current snapshot;
#   - each one's creation time, state and parent (--parent);
#   - its roots (--roots; of a parent cycle libvirt makes one member the
#     root, by hash table order, so any member stands for the cycle);
#   - its trees (snapshot-list --tree, checkpoint-list --tree) against the
#     part of meta tree before the subtrees it says virsh hides;
#   - what it logs while loading (warnings and errors, LIBVIRT_LOG_OUTPUTS)
#     against what the problems reported say it logs (LOGS below).
lv_view () {
  rm -f "$T/lv.log"
  TZ=UTC LIBVIRT_LOG_OUTPUTS="3:file:$T/lv.log" \
    V "snapshot-list vm1 --name; echo @@; checkpoint-list vm1 --name; echo @@;
       snapshot-list vm1 --parent; echo @@; checkpoint-list vm1 --parent; echo @@;
       snapshot-list vm1 --roots --name; echo @@; checkpoint-list vm1 --roots --name; echo @@;
       snapshot-list vm1 --tree; echo @@; checkpoint-list vm1 --tree; echo @@;
       snapshot-current vm1 --name" > "$T/v.raw" 2> "$T/v.err"
  if [ $? -ne 0 ] && ! grep -q "no current snapshot" "$T/v.err"; then
    fail "$1: libvirt loads the metadata" "$(head -3 "$T/v.err")"
    return
  fi
  # virsh's echo ends no line (nor does snapshot-current --name)
  sed 's/@@/\n@@\n/g' "$T/v.raw" > "$T/v.out"
  sec () { awk -v n="$1" '/^@@/ { s++; next } s == n' "$T/v.out"; }
  words () { awk NF | sort | tr '\n' ' '; }
  Q tree vm1 --kind all --output=json > "$T/tree.json" 2>/dev/null
  local vs vc vcur
  vs=$(sec 0 | words) vc=$(sec 1 | words)
  vcur=$(sec 8 | awk NF)
  is "$(jq -r '.snapshots.moments[].name' "$T/tree.json" | words)| $(jq -r '.checkpoints.moments[].name' "$T/tree.json" | words)| $(jq -r '.snapshots.current // ""' "$T/tree.json")" \
     "$vs| $vc| $vcur" "$1: what libvirt loads (snapshots | checkpoints | current) is what qcowkit says"
  # name, creation time, state (snapshots) and parent of each
  local tf='(.["creation-time"] | strftime("%Y-%m-%d %H:%M:%S")) + " +0000"'
  is "$(jq -r ".snapshots.moments[] | [.name, $tf, .state, .parent // empty] | join(\" \")" "$T/tree.json" | sort)
$(jq -r ".checkpoints.moments[] | [.name, $tf, .parent // empty] | join(\" \")" "$T/tree.json" | sort)" \
     "$(sec 2 | awk 'NF { $1 = $1; print }' | sort)
$(sec 3 | awk 'NF { $1 = $1; print }' | sort)" \
     "$1: each one's creation time, state and parent (snapshot-list, checkpoint-list --parent) is what qcowkit read"
  # roots: qcowkit's are those without a parent and the roots of the
  # subtrees it says virsh's tree hides; it detaches every member of a
  # parent cycle, libvirt makes one of them a root: each stands for its
  # cycle, named by its least member
  local k n=4 vr= qr= cyc
  cyc='def cyc($ms): [limit($ms | length; recurse(. as $x |
         ($ms | map(select(.name == $x)))[0].parent // empty))] | min;
       def tok($ms; $m): if $m["detached-reason"] == "cycle"
         then "the cycle of " + ($m.name | cyc($ms)) else $m.name end;'
  for k in snapshots checkpoints; do
    vr="$vr$(sec $n | awk NF |
      jq -R -r --slurpfile t "$T/tree.json" --arg k "$k" "$cyc"'
        . as $n | $t[0][$k].moments as $ms |
        ($ms | map(select(.name == $n)))[0] as $m |
        if $m == null then $n + " (qcowkit does not have it)"
        else tok($ms; $m) end' | words)| "
    qr="$qr$(jq -r --arg k "$k" "$cyc"'.[$k].moments as $ms | $ms[] |
        select(.parent == null or (.detached and .["detached-root"] == .name)) |
        tok($ms; .)' "$T/tree.json" | sort -u | words)| "
    n=5
  done
  is "$vr" "$qr" "$1: libvirt's roots (snapshots | checkpoints; --roots) are qcowkit's"
  # trees: white space at line ends and empty lines aside (the clean
  # metadata's trees are compared exactly above)
  trim () { sed 's/[[:space:]]*$//' | awk NF; }
  is "$(sec 6 | trim)
@@
$(sec 7 | trim)" \
     "$( { Q tree vm1 --kind snapshot; echo; } | sed '/^detached (/,$d' | trim)
@@
$( { Q tree vm1 --kind checkpoint; echo; } | sed '/^detached (/,$d' | trim)" \
     "$1: libvirt's trees (snapshot-list, checkpoint-list --tree) are the trees meta tree says virsh shows"
  # the load log
  is "$(lv_logged)" "$(qk_logged "$T/case.json")" \
     "$1: what libvirt logs while loading is what the problems reported say"
}

# What libvirt 9.0 logs while it loads the metadata, and the problems whose
# presence means that it does (one row: ERE => PROBLEMS). Each message is
# libvirt's own (qemu_domain.c, snapshot_conf.c, virdomainmomentobjlist.c);
# the problems' descriptions say so where they quote it (QUOTES below).
LOGS=(
  "Failed to parse (snapshot|checkpoint) XML from file  =>  PARSE MISSING_NAME MISSING_STATE MISSING_CTIME MISSING_ACTIVE"
  "a redefined snapshot must have a name  =>  MISSING_NAME"
  "missing state from existing snapshot  =>  MISSING_STATE"
  "missing creationTime from existing snapshot  =>  MISSING_CTIME"
  "Could not find 'active' element  =>  MISSING_ACTIVE"
  "Too many snapshots claiming to be current  =>  MULTIPLE_CURRENT"
  "domain moment .*already exists  =>  DUPLICATE_NAME"
  "moment .* lacks parent  =>  MISSING_PARENT"
  "moment .* in circular chain  =>  SELF_PARENT CYCLE"
  "(Snapshots|Checkpoints) have inconsistent relations  =>  MISSING_PARENT SELF_PARENT CYCLE"
)
# Where a problem's description quotes the message libvirt logs, the quote
# is the one LOGS expects for that problem.
QUOTES=(
  "MISSING_ACTIVE  =>  Could not find 'active' element"
  "MULTIPLE_CURRENT  =>  Too many snapshots claiming to be current"
  "DUPLICATE_NAME  =>  domain moment already exists"
)
for q in "${QUOTES[@]}"; do
  p=${q%%  =>  *} quote=${q#*  =>  } ok=false
  for row in "${LOGS[@]}"; do
    [[ " ${row#*  =>  } " == *" $p "* ]] && grep -Eq -- "${row%%  =>  *}" <<< "$quote" && ok=true
  done
  if $ok && qcowkit meta check --list-problems | awk -v p="$p" '$2 == p' | grep -qF -- "$quote"; then
    pass "the description of $p quotes what libvirt logs: $quote"
  else
    fail "the description of $p quotes what libvirt logs: $quote"
  fi
done
# lv_logged: the rows of LOGS (their EREs) that libvirt's load log matches,
# and every other load message it wrote (a message of a function that loads
# or parses metadata: a new libvirt behaviour the table does not know)
lv_logged () {
  sed -n 's/^.*: \(warning\|error\) : \([A-Za-z0-9_]*\):[0-9]* : \(.*\)$/\2 \3/p' \
      "$T/lv.log" 2>/dev/null |
    grep -E '^(qemuDomain(Snapshot|Checkpoint)Load|virDomain(Moment|Snapshot|Checkpoint)[A-Za-z]*|virXML[A-Za-z]*) ' |
    while read -r _ msg; do
      local row known=false
      for row in "${LOGS[@]}"; do
        if grep -Eq -- "${row%%  =>  *}" <<< "$msg"; then
          echo "${row%%  =>  *}"; known=true
        fi
      done
      $known || echo "not in LOGS: $msg"
    done | sort -u | tr '\n' ';'
}
# qk_logged JSON: the rows of LOGS the problems of a meta check report imply
qk_logged () {
  local got row p; got=" $(problems "$1") "
  for row in "${LOGS[@]}"; do
    for p in ${row#*  =>  }; do
      if [[ $got == *" $p "* ]]; then echo "${row%%  =>  *}"; break; fi
    done
  done | sort -u | tr '\n' ';'
}

# claim CASE PROBLEM DESCRIPTION-ERE WHAT VIRSH-COMMANDS STATUS OUTPUT-ERE
#       [AFTER]
# An operation the description of PROBLEM (meta check --list-problems)
# says libvirt refuses or does, asked of a fresh libvirt on the damaged
# metadata of CASE (run right after it): the description says so, CASE
# reported PROBLEM, and virsh's last command exits STATUS (0, or "fails")
# with output (stdout and stderr) matching OUTPUT-ERE; then the shell
# command AFTER, if given, holds.
claim () {
  local cname=$1 p=$2 dre=$3 what=$4 cmds=$5 st=$6 ore=$7 after=${8:-} rc
  if qcowkit meta check --list-problems | awk -v p="$p" '$2 == p' |
       grep -Eq -- "$dre"; then
    pass "$cname: qcowkit says of $p: /$dre/"
  else
    fail "$cname: qcowkit says of $p: /$dre/" \
      "$(qcowkit meta check --list-problems | awk -v p="$p" '$2 == p')"
  fi
  [[ " $(problems "$T/case.json") " == *" $p "* ]] ||
    fail "$cname: reports $p" "got: $(problems "$T/case.json")"
  V "$cmds" > "$T/claim.out" 2>&1
  rc=$?
  if { [ "$st" = fails ] && [ $rc -ne 0 ]; } || [ "$st" = "$rc" ]; then
    if [ -z "$ore" ] || grep -Eq -- "$ore" "$T/claim.out"; then
      if [ -z "$after" ] || (eval "$after"); then
        pass "$cname: libvirt $what"
        return
      fi
      fail "$cname: libvirt $what" "afterwards, false: $after"
      return
    fi
  fi
  fail "$cname: libvirt $what" "virsh exit $rc (want $st), output:" \
    "$(grep -v ' : ' "$T/claim.out" | head -n 4)"
}
# backup_from CHECKPOINT: virsh commands that start vm1, begin a push-mode
# incremental backup from CHECKPOINT and stop vm1 again
backup_from () {
  rm -f "$T/backup.qcow2"
  cat > "$T/backup.xml" <<XML
<domainbackup><incremental>$1</incremental><disks><disk name='vda' type='file'>
<target file='$T/backup.qcow2'/><driver type='qcow2'/></disk></disks></domainbackup>
XML
  echo "start vm1; backup-begin vm1 $T/backup.xml; destroy vm1"
}
sub () { sed -i "$1" "$2"; }
bm_off () { qcowkit dump --output=json "$1" bitmaps | jq -r ".[] | select(.name == \"$2\") | .entry_offset"; }
# poke_bitmap IMAGE BITMAP FIELD-OFFSET QKPOKE-ARGS...: damage a directory entry
poke_bitmap () { local o; o=$(bm_off "$1" "$2") && [ -n "$o" ] && qkpoke "$1" $((o + $3)) "${@:4}"; }

case_ "parent file deleted" "INT_SNAPSHOT_UNKNOWN MISSING_PARENT" rm "$S/s3.xml"
claim "parent file deleted" MISSING_PARENT "forgets the current snapshot" \
  "forgets the current snapshot" "snapshot-current vm1 --name" fails "has no current snapshot"
claim "parent file deleted" MISSING_PARENT "keeps it as a root \\(snapshot-list --name and --roots list it\\)" \
  "keeps the orphan as a root" "snapshot-list vm1 --roots --name" 0 "^e1$"
case_ "own parent" "SELF_PARENT" sub 's|<name>s1</name>\(\s*\)</parent>|<name>s2</name>\1</parent>|; /<parent>/,/<\/parent>/ s|<name>s1</name>|<name>s2</name>|' "$S/s2.xml"
claim "own parent" SELF_PARENT "forgets the current snapshot" \
  "forgets the current snapshot" "snapshot-current vm1 --name" fails "has no current snapshot"
claim "own parent" SELF_PARENT "keeps it as a root \\(snapshot-list --name and --roots list it\\)" \
  "keeps it as a root" "snapshot-list vm1 --roots --name" 0 "^s2$"
case_ "a cycle" "CYCLE CYCLE" sub 's|^  <state>|  <parent>\n    <name>s2</name>\n  </parent>\n  <state>|' "$S/s1.xml"
claim "a cycle" CYCLE "forgets the current snapshot" \
  "forgets the current snapshot" "snapshot-current vm1 --name" fails "has no current snapshot"
claim "a cycle" CYCLE "making one of them a root" \
  "makes one member of the cycle a root" "snapshot-list vm1 --roots --name" 0 "^(s1|s2)$"
case_ "two current" "MULTIPLE_CURRENT" sub 's|<active>0</active>|<active>1</active>|' "$S/s1.xml"
# (the copy created 1000 s later, so that which one libvirt keeps shows)
dup_later () {
  local t; t=$(sed -n 's|.*<creationTime>\([0-9]*\)<.*|\1|p' "$1")
  sed "s|<creationTime>$t<|<creationTime>$(( t + 1000 ))<|" "$1" > "$2"
}
case_ "a duplicate name" "DUPLICATE_NAME FILE_NAME" dup_later "$S/s2.xml" "$S/s2-copy.xml"
case_ "file name not NAME.xml" "FILE_NAME" mv "$S/s2.xml" "$S/other.xml"
claim "file name not NAME.xml" FILE_NAME "writes the snapshot to <name>.xml at its next update, leaving two files for one snapshot" \
  "writes s2.xml at the next update (a revert to it), beside other.xml" "snapshot-revert vm1 s2" 0 "" \
  'grep -q "<name>s2</name>" "$S/s2.xml" && grep -q "<name>s2</name>" "$S/other.xml"'
case_ "a file that does not parse" "INT_SNAPSHOT_UNKNOWN PARSE" truncate -s 300 "$S/s2.xml"
case_ "a name unsafe as a file name" "INT_SNAPSHOT_MISSING INT_SNAPSHOT_UNKNOWN UNSAFE_NAME" sub '0,/<name>s2</s|<name>s2<|<name>../s2<|' "$S/s2.xml"
# (virsh makes a snapshot current by redefining it, which libvirt 9.0
# refuses while checkpoints exist: without them, the name is what counts)
rm -r "$C"
claim "a name unsafe as a file name" UNSAFE_NAME "refuses the name \\(invalid snapshot name\\) wherever it writes: creating or redefining it, making it current" \
  "refuses to make it current, for its name" "snapshot-current vm1 ../s2" fails "invalid snapshot name '\\.\\./s2'"
case_ "no <name>" "INT_SNAPSHOT_UNKNOWN MISSING_NAME" sub '0,/<name>s2<\/name>/{/<name>s2<\/name>/d}' "$S/s2.xml"
case_ "no <state>" "INT_SNAPSHOT_UNKNOWN MISSING_STATE" sub '/<state>/d' "$S/s2.xml"
case_ "no <creationTime>" "INT_SNAPSHOT_UNKNOWN MISSING_CTIME" sub '/<creationTime>/d' "$S/s2.xml"
case_ "no <active>" "INT_SNAPSHOT_UNKNOWN MISSING_ACTIVE" sub '/<active>/d' "$S/s2.xml"
case_ "another domain UUID" "UUID_MISMATCH" sub 's|<uuid>[^<]*</uuid>|<uuid>00000000-0000-0000-0000-000000000001</uuid>|' "$S/s2.xml"
rm -r "$C"   # (as above: redefining is refused while checkpoints exist)
cp "$S/s2.xml" "$T/s2.redefine"
claim "another domain UUID" UUID_MISMATCH "refuses to redefine it" \
  "refuses to redefine it" "snapshot-create vm1 $T/s2.redefine --redefine" fails "definition for snapshot s2 must use uuid"
claim "another domain UUID" UUID_MISMATCH "reverting to it succeeds and gives the domain the snapshot's UUID, in its saved definition too" \
  "reverts to it, and the domain definition takes its UUID" "snapshot-revert vm1 s2" 0 "" \
  'grep -q "<uuid>00000000-0000-0000-0000-000000000001</uuid>" "$ROOT/etc/qemu/vm1.xml"'
case_ "a child created before its parent" "CHILD_BEFORE_PARENT" sub 's|<creationTime>[0-9]*<|<creationTime>1<|' "$S/s3.xml"
case_ "a leftover snapshotDeleteInProgress" "DELETE_IN_PROGRESS" sub 's|<source file=\(.*\)/>|<source file=\1/>\n      <snapshotDeleteInProgress/>|' "$S/e1.xml"
claim "a leftover snapshotDeleteInProgress" DELETE_IN_PROGRESS "refuses to delete that snapshot" \
  "refuses to delete e1" "snapshot-delete vm1 e1" fails "snapshot disk 'vda' was target of not completed snapshot delete"
case_ "a qcow2 snapshot deleted" "INT_SNAPSHOT_MISSING" qemu-img snapshot -d s2 "$IMG/vm1.qcow2"
claim "a qcow2 snapshot deleted" INT_SNAPSHOT_MISSING "reverting to it fails" \
  "fails to revert to it" "snapshot-revert vm1 s2" fails "Could not apply snapshot 's2'"
case_ "a qcow2 snapshot libvirt does not know" "INT_SNAPSHOT_UNKNOWN" qemu-img snapshot -c extra "$IMG/vm1.qcow2"
claim "a qcow2 snapshot libvirt does not know" INT_SNAPSHOT_UNKNOWN "libvirt cannot revert to it or delete it" \
  "cannot revert to it" "snapshot-revert vm1 extra" fails "no domain snapshot with matching name 'extra'"
claim "a qcow2 snapshot libvirt does not know" INT_SNAPSHOT_UNKNOWN "libvirt cannot revert to it or delete it" \
  "cannot delete it" "snapshot-delete vm1 extra" fails "no domain snapshot with matching name 'extra'"
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
claim "domain not on the current snapshot's overlay" BITMAP_MISSING "incremental backups from this checkpoint are impossible" \
  "refuses an incremental backup from c1" "$(backup_from c1)" 0 "missing or broken bitmap 'c1'" \
  '! grep -q "Backup started" "$T/claim.out"'
case_ "a checkpoint's bitmap removed" "BITMAP_MISSING" qemu-img bitmap --remove "$IMG/vm1.e2" c1
claim "a checkpoint's bitmap removed" BITMAP_MISSING "incremental backups from this checkpoint are impossible" \
  "refuses an incremental backup from c1" "$(backup_from c1)" 0 "missing or broken bitmap 'c1'" \
  '! grep -q "Backup started" "$T/claim.out"'
case_ "a bitmap no checkpoint knows" "BITMAP_UNKNOWN" qemu-img bitmap --add "$IMG/vm1.e2" extra
case_ "a bitmap in use" "BITMAP_IN_USE" poke_bitmap "$IMG/vm1.e2" c2 12 be32 3
claim "a bitmap in use" BITMAP_IN_USE "QEMU considers it inconsistent" \
  "refuses an incremental backup from c2" "$(backup_from c2)" 0 "missing or broken bitmap 'c2'" \
  '! grep -q "Backup started" "$T/claim.out"'
case_ "a bitmap with an absurd granularity" "BITMAP_GRANULARITY" poke_bitmap "$IMG/vm1.e2" c2 17 28
claim "a bitmap with an absurd granularity" BITMAP_GRANULARITY "QEMU refuses to open the image, so the domain does not start" \
  "cannot start the domain (QEMU refuses the bitmap)" "start vm1; destroy vm1" fails "Bitmap 'c2' doesn't satisfy the constraints"
case_ "a checkpoint's parent deleted" "BITMAP_UNKNOWN MISSING_PARENT" rm "$C/c1.xml"
lab_restore

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
lab_hold_driver
Q convert vm1 --to bulk > "$T/out" 2>&1; rc=$?
is "$rc" 1 "convert refuses while an embedded libvirt runs on the root"
ok "and says why" grep -q "locked by process" "$T/out"
ok "nothing was changed" test -d "$S" -a ! -e "$ROOT/lib/qemu/snapshot/vm1.xml"
lab_release_driver
is "$?" 0 "the embedded libvirt quits when told (virsh exits 0)"
done_testing
