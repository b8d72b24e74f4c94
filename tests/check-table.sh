#!/bin/bash
# The problem table: codes unique, sorted, well formed; every code in the
# generated man page; classes known.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
scratch

qcowkit check --list-problems > "$T/list" || fail "--list-problems runs"
n=$(wc -l < "$T/list")
ok "the table has rows ($n)" test "$n" -gt 40
codes=$(awk '{print $1}' "$T/list")
ok "every code is 0xPPNNNN" test -z "$(echo "$codes" | grep -vE '^0x[0-9a-f]{6}$')"
is "$(echo "$codes" | sort -u | wc -l)" "$n" "codes are unique"
is "$(echo "$codes" | sort -c 2>&1 && echo sorted)" "sorted" "codes are sorted"
names=$(awk '{print $2}' "$T/list")
is "$(echo "$names" | sort -u | wc -l)" "$n" "names are unique"
bad=$(awk '{print $3}' "$T/list" | grep -vE '^(info|warning|leak|corruption|error)$' | head -1)
is "$bad" "" "every class is known"
# phases: 00..08 only
ok "phases are 00 to 08" test -z "$(echo "$codes" | cut -c3-4 | grep -vE '^0[0-8]$')"
qcowkit check --list-problems=man > "$T/man"
missing=0
for c in $codes; do grep -q "^.B $c " "$T/man" || { missing=1; diag "$c missing from the man page"; }; done
is "$missing" 0 "every code is in qcowkit-problems(7)"
if have groff "qcowkit-problems(7) renders without warnings"; then
  w=$(groff -man -Tutf8 -ww -z "$T/man" 2>&1)
  is "$w" "" "qcowkit-problems(7) renders without warnings"
fi
# The metadata checker's table is in the same page, with its own codes
qcowkit meta check --list-problems > "$T/mlist" || fail "meta check --list-problems runs"
mcodes=$(awk '{print $1}' "$T/mlist")
ok "the metadata table has rows" test "$(wc -l < "$T/mlist")" -gt 20
ok "metadata codes are 0x10NNNN and above" test -z "$(echo "$mcodes" | cut -c3-4 | grep -vE '^1[0-9a-f]$')"
is "$(echo "$mcodes" | sort -c 2>&1 && echo sorted)" "sorted" "metadata codes are sorted"
is "$(printf '%s\n%s\n' "$codes" "$mcodes" | sort | uniq -d)" "" "no code is in both tables"
missing=0
for c in $mcodes; do grep -q "^.B $c " "$T/man" || { missing=1; diag "$c missing from the man page"; }; done
is "$missing" 0 "every metadata code is in qcowkit-problems(7)"
is "$(sed '/^\.SH FIXES/,$d' "$T/man" | grep -c '^\.B 0x')" "$(cat "$T/list" "$T/mlist" | wc -l)" "the page has exactly the rows of both tables (before FIXES)"
# The shipped codes never change: this list only grows.
for c in 0x000001 0x010001 0x01000c 0x020003 0x030004 0x040001 0x040002 0x050001 0x060004 0x070001 0x080001 0x100001 0x10000c 0x10000f 0x110002 0x110004; do
  ok "shipped code $c still exists" grep -q "^$c " "$T/list" "$T/mlist"
done
# The fix table: every fix has its row in the FIXES section, and names at
# least one problem it fixes (its "Fixed by" line under that problem).
fixes=$(sed -n '/^\.SH FIXES/,/^\.SH /s/^\.B \(0x20[0-9a-f]*\) .*/\1/p' "$T/man")
ok "the FIXES section lists fixes ($(echo $fixes | wc -w))" test -n "$fixes"
unnamed=
for f in $fixes; do
  grep "^Fixed by " "$T/man" | grep -qF "fB$f " || unnamed="$unnamed $f"
done
is "$unnamed" "" "every fix is named under a problem it fixes (Fixed by)"
done_testing
