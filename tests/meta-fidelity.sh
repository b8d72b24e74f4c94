#!/bin/bash
# What qcowkit meta says libvirt loads is what libvirt loads (issue #9):
# libvirt's own metadata is copied into variants (white space in each
# field qcowkit reads, document type declarations, internal and external
# entities, deep nesting, NUL bytes, encodings, names unsafe as file
# names; checkpoints, which libvirt also validates against its schema);
# for each, a fresh embedded libvirt 9.0 reads the files (a new
# virsh process reads them again) and its view (which snapshots it lists,
# their parents, the current one, the name snapshot-dumpxml gives) is
# asserted next to what qcowkit meta tree/check --output=json report.
# An entity bomb is refused, and in little memory.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require virsh qemu-img jq
scratch

ROOT=$T/root
IMG=$T/img
lab_init
Q () { timeout 60 qcowkit meta "$1" --libvirt-root "$ROOT" "${@:2}"; }

if ! out=$(V "define $T/dom.xml; snapshot-create-as vm1 s1; snapshot-create-as vm1 s2" 2>&1); then
  fail "libvirt creates the snapshots" "$out"
  done_testing; exit
fi
pass "libvirt creates s1 and its child s2 (current)"
S=$ROOT/lib/qemu/snapshot/vm1
SAVE=$T/save
cp -a "$S" "$SAVE"
UUID=$(sed -n 's|.*<uuid>\(.*\)</uuid>.*|\1|p' "$S/s2.xml")

# variant FILE NAME SED: a copy of s2 (child of s1) named NAME, not
# current, with the sed script applied, as snapshot file FILE
variant () {
  rm -rf "$S"; cp -a "$SAVE" "$S"
  sed -e "0,/<name>s2<\/name>/s||<name>$2</name>|" \
      -e 's|<active>1</active>|<active>0</active>|' -e "$3" \
      "$SAVE/s2.xml" > "$S/$1"
}
prepend () {  # prepend FILE TEXT: TEXT first in FILE
  { printf '%s' "$2"; cat "$1"; } > "$1.new" && mv "$1.new" "$1"
}

# libvirt's view of snapshot NAME, on one line: "loaded, parent P" or
# "skipped", then ", current C"
lv_view () {
  local list
  list=$(V snapshot-list vm1 --name 2>/dev/null)
  if printf '%s\n' "$list" | grep -qxF -- "$1"; then
    printf 'loaded, parent %s' "$(V snapshot-parent vm1 --snapshotname "$1" 2>/dev/null)"
  else
    printf skipped
  fi
  printf ', current %s\n' "$(V snapshot-current vm1 --name 2>/dev/null)"
}
# qcowkit's view, the same way
qk_view () {
  Q tree vm1 --output=json > "$T/tree.json" 2>/dev/null
  jq -r --arg n "$1" '(.snapshots.moments | map(select(.name == $n)) |
    if length > 0 then "loaded, parent " + (.[0].parent // "") else "skipped" end)
    + ", current " + (.snapshots.current // "")' "$T/tree.json"
}
# case_ DESCRIPTION NAME LIBVIRT-LOADS PROBLEMS [detached]:
# after variant
case_ () {
  local lv qk got
  lv=$(lv_view "$2")
  qk=$(qk_view "$2")
  case $3 in
    yes) is "${lv%%,*}" loaded "$1: libvirt loads it" ;;
    no) is "${lv%%,*}" skipped "$1: libvirt skips it" ;;
  esac
  Q check vm1 --no-images --output=json > "$T/check.json" 2>/dev/null
  got=$(problems "$T/check.json")
  case ${5:-} in
    detached)
      # libvirt keeps the name of a parent it cannot find (snapshot-parent
      # gives it) and makes the snapshot a root; meta tree gives the link
      is "${qk/, parent ,/, parent  s1 ,}" "$lv" "$1: qcowkit sees what libvirt sees ($lv)"
      ok "$1: qcowkit names the missing parent ' s1 '" \
        jq -e '[.problems[] | select(.name == "MISSING_PARENT") | .message | contains("parent \u0027 s1 \u0027")] | any' "$T/check.json" ;;
    *) is "$qk" "$lv" "$1: qcowkit sees what libvirt sees ($lv)" ;;
  esac
  is "$got" "$4" "$1: problems ${4:-none}"
}

diag "---- 8: white space, read exactly as libvirt reads it"
variant v.xml v 's|<creationTime>[0-9]*<|<creationTime> 1700000000 <|'
case_ "<creationTime> with spaces around" v no MISSING_CTIME
variant v.xml v 's|<creationTime>[0-9]*<|<creationTime> 1900000000<|'
case_ "<creationTime> with a leading space (strtoll skips it)" v yes ""
variant v.xml v 's|<creationTime>[0-9]*<|<creationTime>+1900000000<|'
case_ "<creationTime> with a sign" v yes ""
variant v.xml v 's|<creationTime>[0-9]*<|<creationTime>99999999999999999999<|'
case_ "<creationTime> beyond long long" v no MISSING_CTIME
variant snap-9.xml ' snap-9 ' ''
case_ "<name> snap-9 </name> is the name ' snap-9 '" ' snap-9 ' yes FILE_NAME
is "$(V snapshot-dumpxml vm1 ' snap-9 ' 2>/dev/null | sed -n 's|^  <name>\(.*\)</name>|\1|p')" \
  " snap-9 " "snapshot-dumpxml gives the name with its spaces"
is "$(Q tree vm1 --output=json | jq -r '.snapshots.moments[] | select(.name | test("snap")) | .name')" \
  " snap-9 " "and so does qcowkit"
variant v.xml ' ' ''
case_ "a name of one space is a name" ' ' yes FILE_NAME
variant v.xml v 's|<name>s1</name>|<name> s1 </name>|'
case_ "<parent><name> s1 </name>: a parent that does not exist" v yes MISSING_PARENT detached
variant v.xml v 's|<state>shutoff<|<state> shutoff <|'
case_ "<state> with spaces" v no MISSING_STATE
variant v.xml v 's|<state>shutoff<|<state>nostate<|'
case_ "<state>nostate</state> is refused" v no MISSING_STATE
variant v.xml v 's|<state>shutoff<|<state>pmsuspended<|'
case_ "<state>pmsuspended</state>" v yes ""
variant v.xml v 's|<active>0<|<active> 0 <|'
case_ "<active> with spaces around" v no MISSING_ACTIVE
variant v.xml v 's|<active>0<|<active> 0<|'
case_ "<active> with a leading space" v yes ""
variant v.xml v 's|<active>0<|<active>4294967296<|'
case_ "<active> beyond int" v no MISSING_ACTIVE
variant v.xml v "s|name='vda'|name=' vda '|"
case_ "disk name=' vda ' (not checked at load)" v yes ""
variant v.xml v "s|snapshot='internal'|snapshot=' internal '|"
case_ "disk snapshot=' internal ' is no mode" v no DISK_INVALID
variant v.xml v "s|<uuid>|<uuid> |; s|</uuid>| </uuid>|"
case_ "domain <uuid> with spaces around (virUUIDParse allows them)" v yes ""
variant v.xml v "s|<uuid>[^<]*<|<uuid>$(echo "$UUID" | tr a-f- A-F\ )<|"
case_ "domain <uuid> in capitals, spaces for dashes: the same UUID" v yes ""
variant v.xml v "s|<uuid>[^<]*<|<uuid>$(echo "$UUID" | tr -d -)<|"
case_ "domain <uuid> without dashes" v yes ""
variant v.xml v "s|<uuid>[^<]*<|<uuid>x$UUID<|"
case_ "a malformed domain <uuid>" v no PARSE
variant v.xml v "s|<uuid>[^<]*<|<uuid>00000000-0000-0000-0000-000000000001<|"
case_ "another domain's <uuid>" v yes UUID_MISMATCH
variant v.xml 'v<![CDATA[-c]]><b>d</b>' ''
case_ "a name of text, CDATA and an element's text" v-cd yes FILE_NAME

diag "---- 9: document type declarations, entities, depth, NUL, encodings, BOM"
variant v.xml v ''
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot>'
case_ "a plain <!DOCTYPE domainsnapshot>" v yes ""
variant v.xml 'v-\&x;' ''
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot [<!ENTITY x "y"><!-- ]> --><?pi "]>"?>]>'
case_ "an internal entity in the name" v-y yes FILE_NAME
is "$(V snapshot-dumpxml vm1 v-y 2>/dev/null | sed -n 's|^  <name>\(.*\)</name>|\1|p')" \
  v-y "libvirt expands it: snapshot-dumpxml gives the name v-y"
variant v.xml v "s|name='vda'|name='\\&x;'|"
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot [<!ENTITY x "vda">]>'
case_ "an internal entity in a disk name" v yes ""
variant v.xml v "s|snapshot='internal'||"
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot [<!ATTLIST disk snapshot CDATA "bogus">]>'
case_ "an <!ATTLIST> default gives a disk snapshot='bogus'" v no DISK_INVALID
variant v.xml v "s|snapshot='internal'||"
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot [<!ATTLIST disk snapshot CDATA "internal">]>'
case_ "an <!ATTLIST> default gives snapshot='internal'" v yes ""
# qcowkit builds no tree for the parts of <domain> it does not read, but
# libxml2 still parses them
variant v.xml v 's|<devices>|<metadata><a></b></metadata><devices>|'
case_ "a mismatched end tag inside <domain><metadata>" v no PARSE
variant v.xml v 's|<devices>|<metadata>\&z;</metadata><devices>|; s|<active>0</active>|<active>\&z;</active>|'
prepend "$S/v.xml" '<!DOCTYPE domainsnapshot [<!ENTITY z "0">]>'
case_ "an entity first used inside <domain><metadata>, then in <active>" v yes ""
# an external entity naming a FIFO: whoever opens it blocks
mkfifo "$T/fifo"
variant v.xml 'v-\&x;' ''
prepend "$S/v.xml" "<!DOCTYPE domainsnapshot [<!ENTITY x SYSTEM \"file://$T/fifo\">]>"
case_ "an external entity is declared, never read (expands to nothing)" v- yes FILE_NAME
variant v.xml v ''
prepend "$S/v.xml" "<!DOCTYPE domainsnapshot SYSTEM \"file://$T/fifo\">"
case_ "an external DTD is never read" v yes ""
variant v.xml v 's|^<domainsnapshot>|<domainsnapshot><description>\&c;</description>|'
prepend "$S/v.xml" '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
case_ "entities that expand to 1000 bytes: libxml2 refuses the amplification" v no PARSE
laughs='<!DOCTYPE d [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">'
prev=a
for e in b c d e f g h i j; do
  laughs="$laughs<!ENTITY $e \"$(printf "&$prev;%.0s" $(seq 10))\">"
  prev=$e
done
laughs="$laughs]>"
variant v.xml v 's|^<domainsnapshot>|<domainsnapshot><description>\&j;</description>|'
prepend "$S/v.xml" "$laughs"
case_ "a billion laughs (66 GB expanded)" v no PARSE
if vlimited $((128 * 1024)) Q check vm1 --no-images --output=json > "$T/bomb.json" 2>&1; [ $? -le 2 ]; then
  is "$(problems "$T/bomb.json")" PARSE "and refused within 128 MiB of address space"
else
  fail "the billion laughs under ulimit -v 128M" "$(head -c 300 "$T/bomb.json")"
fi
deep () {  # deep N: elements nested so that the deepest is at depth N
  local n=$(($1 - 3))
  variant v.xml v "s|<devices>|<metadata>$(printf '<a>%.0s' $(seq $n))$(printf '</a>%.0s' $(seq $n))</metadata><devices>|"
}
deep 200
case_ "200 levels of nesting in <domain><metadata>" v yes ""
deep 257
case_ "257 levels: libxml2's limit" v yes ""
deep 258
case_ "258 levels: over libxml2's limit" v no PARSE
variant v.xml v ''
printf '\0 <<< not XML >>>' >> "$S/v.xml"
case_ "bytes after a NUL that follows the root element" v yes ""
variant v.xml v 's|<active>0</active>|\x00<active>0</active>|'
case_ "a NUL inside the root element" v no PARSE
variant v.xml v ''
prepend "$S/v.xml" "$(printf '\xef\xbb\xbf')"
case_ "a UTF-8 byte order mark" v yes ""
variant v.xml v ''
prepend "$S/v.xml" '  <?xml version="1.0"?>'
case_ "an XML declaration after white space" v no PARSE
variant v.xml "v-$(printf '\xc3\xa9')" ''
prepend "$S/v.xml" '<?xml version="1.0" encoding="UTF-8"?>'
case_ "UTF-8 declared, a non-ASCII name" "v-$(printf '\xc3\xa9')" yes FILE_NAME
variant v.xml "v-$(printf '\xe9')" ''
prepend "$S/v.xml" '<?xml version="1.0" encoding="ISO-8859-1"?>'
case_ "ISO-8859-1 declared: libvirt's string parse cannot switch" v no PARSE

diag "---- 10: names unsafe as file names"
variant v.xml 'v/slash' ''
case_ "a name with '/'" v/slash yes UNSAFE_NAME
out=$(V snapshot-current vm1 v/slash 2>&1)
ok "libvirt refuses to make it current ($out)" grep -q "invalid snapshot name" <<< "$out"
variant v.xml '.v-dot' ''
case_ "a name starting with '.'" .v-dot yes UNSAFE_NAME
out=$(V snapshot-current vm1 .v-dot 2>&1)
ok "libvirt refuses to make it current ($out)" grep -q "invalid snapshot name" <<< "$out"
rm -rf "$S"; cp -a "$SAVE" "$S"
for n in a/b .x ..; do
  out=$(V snapshot-create-as vm1 "$n" 2>&1)
  ok "libvirt refuses to create a snapshot named '$n' ($out)" grep -q "invalid snapshot name" <<< "$out"
done

diag "---- checkpoints: libvirt 9.0 also validates them against domaincheckpoint.rng"
# qcowkit does not (yet): what the schema alone refuses is TODO
rm -rf "$S"; cp -a "$SAVE" "$S"
if out=$(V "start vm1; checkpoint-create-as vm1 c1; checkpoint-create-as vm1 c2; destroy vm1" 2>&1); then
  pass "libvirt creates checkpoints c1 and its child c2"
  C=$ROOT/lib/qemu/checkpoint/vm1
  cp -a "$C" "$T/csave"
  ck_case () {  # DESCRIPTION NAME SED LIBVIRT-LOADS [todo]
    local lv qk
    rm -rf "$C"; cp -a "$T/csave" "$C"
    sed -e "0,/<name>c2<\/name>/s||<name>$2</name>|" -e "$3" \
      "$T/csave/c2.xml" > "$C/k.xml"
    if V checkpoint-list vm1 --name 2>/dev/null | grep -qxF -- "$2"; then lv=loaded; else lv=skipped; fi
    Q tree vm1 --kind checkpoint --output=json > "$T/tree.json" 2>/dev/null
    qk=$(jq -r --arg n "$2" 'if any(.checkpoints.moments[]; .name == $n) then "loaded" else "skipped" end' "$T/tree.json")
    is "$lv" "$4" "checkpoint, $1: libvirt: $4"
    if [ "${5:-}" = todo ]; then
      tap_n=$((tap_n + 1))
      if [ "$qk" = "$lv" ]; then echo "ok $tap_n - checkpoint, $1: qcowkit agrees # TODO schema validation"
      else echo "not ok $tap_n - checkpoint, $1: qcowkit agrees # TODO schema validation"; fi
    else
      is "$qk" "$lv" "checkpoint, $1: qcowkit agrees"
    fi
  }
  ck_case "<creationTime> with spaces around" k 's|<creationTime>[0-9]*<|<creationTime> 1900000000 <|' skipped
  ck_case "<creationTime> with a leading space (the schema refuses it)" k 's|<creationTime>[0-9]*<|<creationTime> 1900000000<|' skipped todo
  ck_case "<name> k </name> (the schema's name pattern)" ' k ' '' skipped todo
  ck_case "<parent><name> c1 </name> (the schema's name pattern)" k 's|<name>c1</name>|<name> c1 </name>|' skipped todo
  ck_case "disk checkpoint=' bitmap ' (the schema's token collapses it; the C parser trusts the schema)" k "s|checkpoint='bitmap'|checkpoint=' bitmap '|" loaded todo
  ck_case "a plain checkpoint" k '' loaded
else
  fail "libvirt creates checkpoints" "$out"
fi
done_testing
