#!/bin/bash
# qcowkit check reads each piece of metadata about once: on images whose
# data was written in random order (so that walking the L2 tables in guest
# order jumps between refcount blocks, as host order is random), the bytes
# it reads from the image (counted with strace) stay within 1.5 times the
# image's metadata (header cluster, L1 tables, distinct L2 tables, refcount
# table and blocks, snapshot table) plus one cluster. 512-byte clusters
# give many refcount blocks (256 clusters each) in a 2 MiB file. The
# images check clean, as in qemu-img check.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require strace qemu-img qemu-io jq
scratch

# randwrites IMG COUNT SLOTS LEN SEED: COUNT writes of LEN bytes at the
# starts of distinct LEN-byte slots, in random order (the same every time)
randwrites () {
  shuf -i 0-$(($3 - 1)) -n "$2" --random-source=<(yes "$5") |
    awk -v l="$4" '{ printf "write -P %d %.0f %d\n", $1 % 250 + 1, $1 * l, l }' |
    qemu-io -f qcow2 "$1" >/dev/null
}

# metadata IMG: the bytes of metadata qcow2 check has to read
metadata () {
  local img=$1 info cs e l2s n
  info=$(qcowkit info --output=json "$img") || return 1
  cs=$(jq '."cluster-size"' <<<"$info")
  # the L2 tables of the active and every snapshot L1 table, once each
  {
    qcowkit dump "$img" l1
    n=$(jq '.qcowkit.layout."snapshot-table".entries' <<<"$info")
    for ((i = 0; i < n; i++)); do qcowkit dump "$img" snapshot-l1 "$i"; done
  } | while read -r _ _ e; do
    echo $((e & 0x00fffffffffffe00))
  done | grep -vx 0 | sort -u > "$T/l2s"
  l2s=$(wc -l < "$T/l2s")
  n=$(qcowkit dump "$img" refcount-table | awk '$3 != "0x0000000000000000"' |
        wc -l)
  jq -n --argjson i "$info" --argjson cs "$cs" --argjson l2 "$l2s" \
    --argjson rb "$n" --argjson snl1 \
    "$(qcowkit dump --output=json "$img" snapshots |
         jq '[.[].l1_size * 8] | add // 0')" \
    '$cs + $i.qcowkit.layout."l1-table".length + $l2 * $cs
     + $i.qcowkit.layout."refcount-table".length + $rb * $cs
     + $i.qcowkit.layout."snapshot-table".length + $snl1'
}

# bytes_read IMG: the bytes qcowkit check reads from IMG (every thread, a
# file each: no call is split between two lines)
bytes_read () {
  rm -f "$T"/st.*
  traced_env strace -ff -y -e trace=read,pread64,readv,preadv,preadv2 -o "$T/st" \
    qcowkit check "$1" >/dev/null || return 1
  cat "$T"/st.* | grep -F "<$1>" |
    awk -F'= ' '$NF ~ /^[0-9]+$/ { s += $NF } END { print s + 0 }'
}

reads_within () {  # reads_within NAME IMG
  local name=$1 img=$2 meta got cs lim
  meta=$(metadata "$img")
  cs=$(qcowkit info --output=json "$img" | jq '."cluster-size"')
  got=$(bytes_read "$img")
  lim=$((meta * 3 / 2 + cs))
  diag "$name: read $got bytes, metadata $meta bytes"
  if [ -n "$got" ] && [ -n "$meta" ] && [ "$meta" -gt 0 ] &&
       [ "$got" -le "$lim" ]; then
    pass "$name: check reads at most 1.5 x the metadata + a cluster"
  else
    fail "$name: check reads at most 1.5 x the metadata + a cluster" \
      "read ${got:-?} bytes, metadata ${meta:-?} bytes, limit $lim"
  fi
}

clean () {  # clean NAME IMG: both tools find nothing
  local q a
  q=$(qcowkit check --output=json "$2" | jq -c '[.corruptions, .leaks, ."check-errors", ."image-end-offset", ."allocated-clusters", ."fragmented-clusters"]')
  a=$(qemu-img check --output=json "$2" | jq -c '[.corruptions, .leaks, ."check-errors" // 0, ."image-end-offset", ."allocated-clusters", ."fragmented-clusters"]')
  is "$q" "$a" "$1: the same counts as qemu-img check"
  is "$(jq -c '.problems | length' <<<"$(qcowkit check --output=json "$2")")" 0 \
    "$1: qcowkit reports no problem"
}

# 8 MiB of 512-byte clusters, a quarter written in random order: 256 L2
# tables made by the first writes, 18 refcount blocks
img=$T/random.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 "$img" 8M
randwrites "$img" 4096 16384 512 1
clean random "$img"
reads_within random "$img"

# the same, then a snapshot (every refcount 2, COPIED clear), 1024
# clusters rewritten in random order (copied: refcount 1 again, in new L2
# tables), and another snapshot. The last snapshot puts the snapshot
# table at the end of the file: the image reader reads the table through
# a window of up to 1 MiB that stops at the end of the file, which here
# would be more than the whole metadata (the reader is not check's).
img2=$T/random-snap.qcow2
cp "$img" "$img2"
qemu-img snapshot -c s1 "$img2"
randwrites "$img2" 1024 16384 512 2
qemu-img snapshot -c s2 "$img2"
clean random-snapshot "$img2"
reads_within random-snapshot "$img2"

# 4 KiB clusters, 1 GiB with 2048 writes scattered over all of it: an L2
# table for each 2 MiB range written, and 8 refcount blocks
img3=$T/scatter.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k "$img3" 1G
randwrites "$img3" 2048 262144 4096 3
clean scatter "$img3"
reads_within scatter "$img3"
done_testing
