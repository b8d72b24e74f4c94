#!/bin/bash
# meta tree and meta check on a chain of 200,000 snapshots (also below a
# missing parent, and closed into a cycle): both complete in 1 GiB of
# address space (no recursion on the depth), and the tree's output is
# linear in the number of snapshots (the indentation stops at a fixed
# depth and the rest of the depth is a number).
# Damaged trees (a missing parent, a snapshot its own parent, cycles, a
# parent libvirt skips) against a fresh embedded libvirt each: meta tree
# shows what virsh snapshot-list --tree (checkpoint-list --tree) shows,
# lists as detached exactly what virsh's tree omits, and its current
# snapshot is virsh's snapshot-current.
# Hostile names and file names (a newline and a forged problem line, an
# ESC, a backslash) are escaped in every human output, one line a problem,
# and exact in JSON.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq virsh
scratch

# A sanitizer build reserves terabytes of shadow memory: no ulimit -v there
san=false
grep -q '^SAN_CFLAGS = .*sanitize' "${top_builddir:-.}/Makefile" 2>/dev/null && san=true
limited () {
  if $san; then timeout 600 "$@"; else (ulimit -v 1048576; timeout 300 "$@"); fi
}

# ---- a 200,000-deep chain ----
N=200000
L=16        # the levels drawn with indentation
R=$T/deep
meta_gen "$R" d $N bulk chain
# run NAME CMD...: time and peak RSS of one command, output in $T/NAME.out
# (time's last line: it says first when the command exited non-zero)
run () {
  local name=$1 t0=$SECONDS; shift
  if [ -x /usr/bin/time ]; then
    limited /usr/bin/time -f %M -o "$T/$name.rss" "$@" > "$T/$name.out" 2> "$T/$name.err"
  else
    limited "$@" > "$T/$name.out" 2> "$T/$name.err"
  fi
  rc=$?
  diag "$name: exit $rc, $((SECONDS - t0)) s, peak RSS $(($(tail -1 "$T/$name.rss" 2>/dev/null || echo 0) / 1024)) MiB, $(stat -c %s "$T/$name.out") bytes of output"
}

run tree qcowkit meta tree --libvirt-root "$R" d
is "$rc" 0 "meta tree of a $N-deep chain completes in 1 GiB"
bytes=$(stat -c %s "$T/tree.out")
ok "its output is linear: $bytes bytes, under 160 a snapshot" test "$bytes" -lt $((N * 160))
is "$(wc -l < "$T/tree.out")" $((2 * N)) "two lines a snapshot (the name, the | below it), one blank at the end"
is "$(grep -oE 's[0-9]+$' "$T/tree.out" | sort -u | wc -l)" $N "every snapshot is shown once"
ok "no line is longer than the indentation of $L levels and a name" \
  test "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$T/tree.out")" -le $((4 * L - 2 + 20))
# the lines of s0..s16 are virsh's, deeper ones say how much deeper they are
want=$(awk -v n=$N -v l=$L 'BEGIN {
  ind = ""
  print "s0"
  for (i = 1; i < n; i++) {
    if (i == 1) { print "  |"; ind = "  " }
    else if (i <= l) { print ind "    |"; ind = ind "    " }
    else print ind "|"
    if (i <= l) print ind "+- s" i
    else print ind "+- [+" (i - l) "] s" i
  }
  print ind
}')
if [ "$want" = "$(cat "$T/tree.out")" ]; then
  pass "the chain is drawn as virsh draws it to depth $L, then at depth $L with [+K]"
else
  fail "the chain is drawn as virsh draws it to depth $L, then at depth $L with [+K]" \
    "$(diff <(echo "$want") "$T/tree.out" | head -6)"
fi

run json qcowkit meta tree --output=json --libvirt-root "$R" d
is "$rc" 0 "meta tree --output=json of the chain completes in 1 GiB"
is "$(jq -r '.snapshots | (.moments | length), .moments[0].name, (.moments[] | select(.name == "s199999") | .parent), .current' "$T/json.out" 2>&1 | tr '\n' ' ')" \
  "$N s0 s199998 s199999 " "and lists every snapshot with its parent, and the current one"

run check qcowkit meta check --no-images --libvirt-root "$R" d
is "$rc" 0 "meta check of the chain completes in 1 GiB and finds it clean"
ok "and says so" grep -q "^No errors were found" "$T/check.out"

# the same chain below a missing parent: one detached subtree, as deep
F=$R/lib/qemu/snapshot/d.xml
sed -i '0,/<name>s0<\/name>/s||<name>s0</name>\n    <parent>\n      <name>gone</name>\n    </parent>|' "$F"
run detached qcowkit meta tree --libvirt-root "$R" d
is "$rc" 0 "the chain below a missing parent: meta tree completes in 1 GiB"
is "$(head -2 "$T/detached.out")" "detached (libvirt's tree does not show these):
s0 (parent 'gone' does not exist)" "and shows all of it as one detached subtree"
is "$(wc -l < "$T/detached.out")" $((2 * N + 1)) "drawn as before, below the heading"
# and a cycle through all of it
sed -i '0,/<name>gone<\/name>/s||<name>s199999</name>|' "$F"
run cycle qcowkit meta check --no-images --output=json --libvirt-root "$R" d
is "$rc $(jq '[.problems[] | select(.name == "CYCLE")] | length' "$T/cycle.out")" "2 $N" \
  "a cycle through all $N: meta check completes in 1 GiB and names every member"
rm -rf "$R"

# ---- libvirt's view of damaged trees ----
R=$T/lv
mkdir -p "$R/etc"
# user root: no libvirt-qemu account needed, and the capability cache stays
# valid between the virsh processes
printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' \
  > "$R/etc/qemu.conf"
V () { timeout 120 virsh -q -c "qemu:///embed?root=$R" "$@"; }
Q () { qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }
# tree_names: the names in a tree drawing (virsh's or ours), sorted
tree_names () {
  sed -E 's/^[ |]*//; s/^\+- (\[\+[0-9]+\] )?//; s/ \(.*$//' | grep -v '^$' | sort
}
# damage KIND N SHAPE EDIT FILE...: a fresh per-file tree of N moments, then
# each EDIT (a sed script, or rm) applied to FILE
damage () {
  local kind=$1 n=$2 shape=$3; shift 3
  rm -rf "$R/lib/qemu/snapshot" "$R/lib/qemu/checkpoint"
  meta_gen "$R" vm1 "$n" per-file "$shape" 0 "$kind"
  while [ $# -ge 2 ]; do
    if [ "$1" = rm ]; then rm "$R/lib/qemu/$kind/vm1/$2"
    else sed -i "$1" "$R/lib/qemu/$kind/vm1/$2"; fi
    shift 2
  done
}
# lv_case NAME KIND "ROOT:REASON..." EDIT FILE...: a binary tree of 12
# (s_i the child of s_((i-1)/2), s11 current), damaged, against a virsh
# started on it; ROOT:REASON are the detached subtrees qcowkit must name
lv_case () {
  local name=$1 kind=$2 roots=$3; shift 3
  local list=$kind-list plural=${kind}s
  damage "$kind" 12 binary "$@"
  if ! V "$list vm1 --tree; echo @@; $list vm1 --name; echo @@; snapshot-current vm1 --name" \
       > "$T/v.raw" 2> "$T/v.err"; then
    if ! grep -q "no current snapshot" "$T/v.err"; then
      fail "$name: virsh reads the metadata" "$(head -5 "$T/v.err")"
      return
    fi
  fi
  local vtree vnames vcur hidden
  # virsh's echo ends no line (nor does snapshot-current --name)
  sed 's/@@/\n@@\n/g' "$T/v.raw" > "$T/v.out"
  vtree=$(awk '/^@@$/ { exit } { print }' "$T/v.out")
  vnames=$(awk '/^@@/ { s++; next } s == 1' "$T/v.out" | grep -v '^$' | sort)
  vcur=$(awk '/^@@/ { s++; next } s == 2' "$T/v.out")
  hidden=$(comm -23 <(echo "$vnames") <(echo "$vtree" | tree_names))
  Q tree --kind "$kind" vm1 > "$T/q.out" 2>&1
  Q tree --kind "$kind" --output=json vm1 > "$T/q.json" 2>&1
  is "$(sed '/^detached (/,$d' "$T/q.out")" "$vtree" "$name: meta tree shows what virsh's $list --tree shows"
  is "$(jq -r ".$plural.moments[] | select(.detached) | .name" "$T/q.json" | sort)" "$hidden" \
    "$name: JSON marks as detached what virsh's tree omits: $(echo ${hidden:-none})"
  is "$(sed -n '/^detached (/,$p' "$T/q.out" | tail -n +2 | tree_names)" "$hidden" \
    "$name: and the human output lists them below its heading"
  is "$(jq -r "[.$plural.moments[] | select(.detached and .\"detached-reason\" != \"below-detached\") | .name + \":\" + .\"detached-reason\"] | join(\" \")" "$T/q.json")" \
    "$roots" "$name: the detached subtrees and why: ${roots:-none}"
  is "$(jq ".$plural.moments | length" "$T/q.json")" "$(echo "$vnames" | grep -c .)" \
    "$name: libvirt keeps them all ($list --name)"
  if [ "$kind" = snapshot ]; then
    is "$(jq -r '.snapshots.current // ""' "$T/q.json")" "$vcur" \
      "$name: current is virsh's snapshot-current: ${vcur:-none}"
  fi
}
P0='s|<name>s0</name>|<name>%s</name>|'
lv_case "clean" snapshot ""
lv_case "a second root" snapshot "" '/<parent>/,/<\/parent>/d' s1.xml
lv_case "a missing parent" snapshot "s1:missing-parent" "$(printf "$P0" nope)" s1.xml
lv_case "its own parent (holding the current one)" snapshot "s2:self-parent" "$(printf "$P0" s2)" s2.xml
lv_case "a cycle of two" snapshot "s1:cycle s3:cycle" "$(printf "$P0" s3)" s1.xml
lv_case "a cycle of three" snapshot "s1:cycle s3:cycle s7:cycle" "$(printf "$P0" s7)" s1.xml
lv_case "a parent's file deleted" snapshot "s3:missing-parent s4:missing-parent" rm s1.xml
lv_case "a parent libvirt skips" snapshot "s5:missing-parent s6:missing-parent" '/<state>/d' s2.xml
lv_case "two kinds of damage" snapshot "s2:self-parent s3:missing-parent" \
  "$(printf "$P0" s2)" s2.xml 's|<name>s1</name>|<name>gone</name>|' s3.xml
lv_case "checkpoints: clean" checkpoint ""
lv_case "checkpoints: a missing parent" checkpoint "s1:missing-parent" "$(printf "$P0" nope)" s1.xml
lv_case "checkpoints: a cycle" checkpoint "s1:cycle s3:cycle" "$(printf "$P0" s3)" s1.xml

# a chain deeper than the indentation: virsh's lines down to the 16th level
damage snapshot 20 per-file chain
V snapshot-list vm1 --tree > "$T/v.out" 2>&1
Q tree vm1 > "$T/q.out" 2>&1
is "$(head -n $((2 * L + 1)) "$T/q.out")" "$(head -n $((2 * L + 1)) "$T/v.out")" \
  "a 20-deep chain: meta tree draws levels 0 to $L as virsh does"
is "$(sed -n "$((2 * L + 2)),\$p" "$T/q.out" | tree_names | tr '\n' ' ')" "$(seq -f 's%g' 17 19 | tr '\n' ' ')" \
  "and the deeper ones after them"

# ---- hostile names and paths ----
R=$T/hostile
Q () { qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }
forged='ERROR 0x10000c MISSING_PARENT: forged'
esc=$(printf 's8\033[2J\033]0;owned\007')
nl_cur="s11
$forged"
nl_parent="nope
$forged"
meta_gen "$R" vm1 12 per-file binary
S=$R/lib/qemu/snapshot/vm1
clean_lines=$(Q tree vm1 | wc -l)
# the current snapshot named with a newline, a name with a backslash, a
# file name with ESC and BEL
sed -i "0,/<name>s11</s|<name>s11<|<name>s11\n$forged<|" "$S/s11.xml"
sed -i '0,/<name>s10</s|<name>s10<|<name>s10\\x1b<|' "$S/s10.xml"
mv "$S/s8.xml" "$S/$esc.xml"
# raw_controls FILE: control bytes other than newline (0 when escaped)
raw_controls () { LC_ALL=C tr -d '\n' < "$1" | LC_ALL=C tr -dc '\000-\037\177' | wc -c; }
# hostile_check NAME: meta check's human output has one line a problem
hostile_check () {
  Q check --no-images vm1 > "$T/h.out" 2>&1
  Q check --no-images --output=json vm1 > "$T/h.json" 2>&1
  local np; np=$(jq '.problems | length' "$T/h.json")
  is "$(raw_controls "$T/h.out")" 0 "$1: meta check prints no raw control byte"
  is "$(grep -cE '^(ERROR|FAILED|Warning|Info) 0x' "$T/h.out")" "$np" "$1: one line for each of its $np problems"
  is "$(wc -l < "$T/h.out")" $((3 + np + 1 + $(grep -c '^No errors' "$T/h.out"))) \
    "$1: and no other line"
  ok "$1: no forged problem line" test "$(grep -c "^$forged" "$T/h.out")" = 0
}
hostile_check "a name with a newline, a file name with ESC"
is "$(jq -r '.snapshots.current' "$T/h.json")" "$nl_cur" "JSON: the current name exactly, newline included"
ok "JSON: a message holds the file name exactly, ESC included" \
  test "$(jq --arg f "$S/$esc.xml" '[.problems[] | select(.message | contains($f))] | length' "$T/h.json")" -ge 1
ok "human: the current name escaped" grep -qF "current 's11\x0a$forged'" "$T/h.out"
ok "human: the file name escaped" grep -qF 's8\x1b[2J\x1b]0;owned\x07.xml' "$T/h.out"
Q tree vm1 > "$T/t.out" 2>&1
Q tree --output=json vm1 > "$T/t.json" 2>&1
is "$(raw_controls "$T/t.out")" 0 "meta tree prints no raw control byte"
is "$(wc -l < "$T/t.out")" "$clean_lines" "and as many lines as before the names were changed"
ok "human: a name with a newline is one line, escaped" grep -qxF "      |   +- s11\x0a$forged" "$T/t.out"
ok "human: a backslash is escaped, so the name cannot pass for an escape" grep -qxF '  |       +- s10\\x1b' "$T/t.out"
is "$(jq -r '.snapshots.moments[] | select(.parent == "s4") | .name' "$T/t.json" | head -1)" 's10\x1b' \
  "JSON: that name exactly"
# a parent named with a newline: a missing parent, in check and in tree
sed -i "0,/<name>s2</s|<name>s2<|<name>$(echo "$nl_parent" | sed -n 1p)\n$forged<|" "$S/s5.xml"
hostile_check "a missing parent named with a newline"
ok "human: the detached subtree says why, escaped, on one line" \
  grep -qxF "s5 (parent 'nope\x0a$forged' does not exist)" <(Q tree vm1)
is "$(Q tree --output=json vm1 | jq -r '.snapshots.moments[] | select(.name == "s5") | .parent')" "$nl_parent" \
  "JSON: the parent's name exactly"

done_testing
