#!/bin/bash
# Differential test: `qcowkit map` against `qemu-img map` over the image
# matrix (tests/functions.sh: build_matrix).
#
# JSON: qemu-img's list must equal ours once our extra "compressed" key is
# deleted (ours is a superset), for the whole disk and for an unaligned
# --start-offset/--max-length window; empty ranges.
# Human: identical text, except that qemu-img stops with "File contains
# external, encrypted or compressed clusters." at the first compressed
# extent, where we print a "compressed" line and go on (documented in
# qcowkit-map(1)): there, qemu-img's lines must be a prefix of ours and our
# next line the compressed extent.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch

# (not in a || list: that would turn off the set -e inside build_matrix)
build_matrix "$T/m"
[ $? -eq 0 ] || { fail "build the image matrix"; done_testing; exit 1; }
cd "$T/m" || exit 1

while IFS=$'\t' read -r -a f; do
  i=${f[0]}

  # --- JSON, whole disk ---
  qemu-img map --output=json "$i" > "$T/q.json" 2> "$T/q.err"
  qrc=$?
  qcowkit map --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  orc=$?
  if [ $qrc -ne 0 ]; then
    fail "$i: qemu-img map failed" "$(cat "$T/q.err")"
    continue
  fi
  is "$orc" 0 "$i: map --output=json exits 0"
  [ -s "$T/o.err" ] && diag "stderr: $(cat "$T/o.err")"
  ok "$i: map JSON equals qemu-img's (minus \"compressed\")" \
    json_eq 'map(del(.compressed))' "$T/q.json" "$T/o.json"
  # "compressed" appears exactly where qemu-img has data without an offset
  # in a qcow2 layer (data files and raw layers always have offsets)
  ok "$i: \"compressed\" marks exactly the data extents without an offset" \
    json_eq 'map(select(.data and (has("offset")|not)) | del(.compressed))' \
      "$T/q.json" <(jq 'map(select(.compressed == true) | del(.compressed))' \
                       "$T/o.json")

  # --- JSON, an unaligned window ---
  vs=$(qemu-img info --output=json "$i" | jq '."virtual-size"')
  st=$((vs / 3 + 4097))
  len=$((vs / 4 + 1234))
  qemu-img map --output=json --start-offset $st --max-length $len "$i" \
    > "$T/q.json" 2>/dev/null
  qcowkit map --output=json --start-offset $st --max-length $len "$i" \
    > "$T/o.json" 2> "$T/o.err"
  ok "$i: map window [$st, +$len) equals qemu-img's" \
    json_eq 'map(del(.compressed))' "$T/q.json" "$T/o.json"

  # --- human ---
  qemu-img map "$i" > "$T/q.txt" 2> "$T/q.err"
  qrc=$?
  qcowkit map "$i" > "$T/o.txt" 2> "$T/o.err"
  orc=$?
  is "$orc" 0 "$i: human map exits 0"
  if [ $qrc -eq 0 ]; then
    if cmp -s "$T/q.txt" "$T/o.txt"; then
      pass "$i: human map is qemu-img's text"
    else
      fail "$i: human map is qemu-img's text" \
        "$(diff "$T/q.txt" "$T/o.txt" | head -10)"
    fi
  else
    # qemu-img stopped at a compressed extent
    n=$(wc -l < "$T/q.txt")
    if grep -q 'compressed clusters' "$T/q.err" &&
       head -n "$n" "$T/o.txt" | cmp -s - "$T/q.txt" &&
       sed -n "$((n + 1))p" "$T/o.txt" | grep -Eq '^(0|0x[0-9a-f]+) +0x[0-9a-f]+ +compressed *$'
    then
      pass "$i: human map: qemu-img's lines, then the compressed extent"
    else
      fail "$i: human map: qemu-img's lines, then the compressed extent" \
        "qemu-img: $(cat "$T/q.err")" \
        "$(diff "$T/q.txt" "$T/o.txt" | head -10)"
    fi
  fi
done < MANIFEST

# A raw image read directly, its size not a multiple of 512 (qemu-img
# rounds it up; the tail reads as zeros)
i=chain2/base.raw
qemu-img map --output=json "$i" > "$T/q.json"
qcowkit map --output=json "$i" > "$T/o.json"
ok "$i: map JSON equals qemu-img's" json_eq . "$T/q.json" "$T/o.json"
qemu-img map "$i" > "$T/q.txt"
qcowkit map "$i" > "$T/o.txt"
ok "$i: human map is qemu-img's text" cmp -s "$T/q.txt" "$T/o.txt"

# Large guest offsets (map only: the raw files would be terabytes): a 1 TiB
# disk with data at 5 GiB and in its last cluster, a zeroed GiB, and a
# compressed cluster; an 8 TiB one with extended L2 and 2 MiB clusters; and
# a 2 TiB overlay of the first (the backing ends at 1 TiB)
mkdir -p "$T/big"
qemu-img create -q -f qcow2 "$T/big/big.qcow2" 1T
mx_io "$T/big/big.qcow2" 'write -P 1 5G 64k' 'write -z 600G 1G' \
  'write -c -P 3 1023G 64k' 'write -P 4 1099511562240 65536'
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=2M \
  "$T/big/big2.qcow2" 8T
mx_io "$T/big/big2.qcow2" 'write -P 1 5G 64k' 'write -z 7T 1G' \
  'write -P 4 4G 1k' 'write -z -u 8191G 1M'
qemu-img create -q -f qcow2 -o cluster_size=2M -b big.qcow2 -F qcow2 \
  "$T/big/top.qcow2" 2T
mx_io "$T/big/top.qcow2" 'write -P 9 1023G 512' 'write -P 8 1500G 4k'
settle "$T/big"
for i in big/big.qcow2 big/big2.qcow2 big/top.qcow2; do
  (cd "$T" && qemu-img map --output=json "$i") > "$T/q.json"
  (cd "$T" && qcowkit map --output=json "$i") > "$T/o.json"
  ok "$i: map JSON equals qemu-img's" \
    json_eq 'map(del(.compressed))' "$T/q.json" "$T/o.json"
done

# Empty ranges: qemu-img prints one empty extent at the start asked for
# (even past the end), not an empty list
for a in "--start-offset 3000320" "--start-offset 5000000" "--max-length 0" \
         "--start-offset 4097 --max-length 0"; do
  qemu-img map --output=json $a odd.qcow2 > "$T/q.json"
  qcowkit map --output=json $a odd.qcow2 > "$T/o.json"
  ok "odd.qcow2 $a: an empty range as qemu-img prints it" \
    cmp -s "$T/q.json" "$T/o.json"
done

done_testing
