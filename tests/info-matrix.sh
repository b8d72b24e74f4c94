#!/bin/bash
# Differential test: `qcowkit info --output=json` against
# `qemu-img info --output=json` over the image matrix (tests/functions.sh:
# build_matrix).
#
# Every field qemu-img prints must be in ours with the same value (ours is
# a superset). That includes "actual-size": both stat the same file. The
# same holds element by element for the --backing-chain arrays, which must
# have the same length. Our extra information is under "qcowkit" only (at
# the top level and in format-specific.data nothing else is added).
# The human output is qemu-img's, followed by a "qcowkit details:" section.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch

# (not in a || list: that would turn off the set -e inside build_matrix)
build_matrix "$T/m"
[ $? -eq 0 ] || { fail "build the image matrix"; done_testing; exit 1; }
cd "$T/m" || exit 1

# extra_keys QEMU OURS: our top-level and format-specific keys that qemu-img
# does not print, for each image of a chain (or the one image). Only
# "qcowkit" is expected: a key named like QEMU's must mean what QEMU's
# means, and be there when QEMU's is.
extra_keys () {
  jq -n -c --slurpfile q "$1" --slurpfile o "$2" '
    def arr: if type == "array" then . else [.] end;
    [($q[0]|arr) as $qa | ($o[0]|arr) | to_entries[] | .key as $n | .value
     | ((keys - ($qa[$n] | keys))
        + ((."format-specific".data // {} | keys)
           - ($qa[$n]."format-specific".data // {} | keys)))]'
}

while IFS=$'\t' read -r -a f; do
  i=${f[0]}

  qemu-img info --output=json "$i" > "$T/q.json" 2> "$T/q.err" ||
    { fail "$i: qemu-img info failed" "$(cat "$T/q.err")"; continue; }
  qcowkit info --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "$i: info exits 0"
  [ -s "$T/o.err" ] && diag "stderr: $(cat "$T/o.err")"
  ok "$i: info JSON has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  is "$(extra_keys "$T/q.json" "$T/o.json")" '[["qcowkit"]]' \
    "$i: no keys beyond qemu-img's but \"qcowkit\""
  # The snapshot list is complete (not just a superset of a prefix)
  ok "$i: same number of snapshots" \
    json_eq '.snapshots // [] | length' "$T/q.json" "$T/o.json"

  qemu-img info --backing-chain --output=json "$i" > "$T/q.json" 2> "$T/q.err" ||
    { fail "$i: qemu-img info --backing-chain failed" "$(cat "$T/q.err")"; continue; }
  qcowkit info --backing-chain --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "$i: info --backing-chain exits 0"
  ok "$i: --backing-chain: as many images as qemu-img" \
    json_eq 'length' "$T/q.json" "$T/o.json"
  ok "$i: --backing-chain JSON has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  is "$(extra_keys "$T/q.json" "$T/o.json" | jq -c unique)" '[["qcowkit"]]' \
    "$i: --backing-chain: no keys beyond qemu-img's but \"qcowkit\""

  # Human output: qemu-img's text, then (per image) our "qcowkit details:"
  # section, which is cut here
  TZ=UTC qemu-img info --backing-chain "$i" > "$T/q.txt" 2>/dev/null
  TZ=UTC qcowkit info --backing-chain "$i" 2>/dev/null |
    sed '/^qcowkit details:/,/^$/{/^$/!d}' > "$T/o.txt"
  if cmp -s "$T/q.txt" "$T/o.txt"; then
    pass "$i: human info --backing-chain is qemu-img's text (and ours)"
  else
    fail "$i: human info --backing-chain is qemu-img's text (and ours)" \
      "$(diff "$T/q.txt" "$T/o.txt" | head -12)"
  fi
done < MANIFEST

# The lower images of the backing chains, opened directly
for i in chain/base.qcow2 chain2/base.raw chain2/mid.qcow2; do
  qemu-img info --output=json "$i" > "$T/q.json"
  qcowkit info --output=json "$i" > "$T/o.json"
  ok "$i: info JSON has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
done

done_testing
