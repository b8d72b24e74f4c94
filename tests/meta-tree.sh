#!/bin/bash
# meta tree and meta check on a chain of 200,000 snapshots: both complete
# in 1 GiB of address space (no recursion on the depth), and the tree's
# output is linear in the number of snapshots (the indentation stops at a
# fixed depth and the rest of the depth is a number).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq
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
rm -rf "$R"

done_testing
