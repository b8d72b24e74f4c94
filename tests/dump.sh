#!/bin/bash
# qcowkit dump: every structure, human and --output=json, on images made by
# qemu-img/qemu-io. Every value must equal what qkpoke peek reads at the
# offset the qcow2 specification documents (the header at its byte
# offsets, L1[0] at l1_table_offset, and so on), the JSON must parse, and
# bad arguments must give exit 2.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io python3
scratch
cd "$T" || exit 1

peek () { qkpoke "$1" peek "$2" "${3:-be64}"; }
u64 () { printf '%u' "$(( $1 ))"; }   # any bash number -> unsigned decimal
OFF_MASK=0x00fffffffffffe00

# jflat FILE: every scalar of a JSON document as "PATH VALUE" lines (exact
# integers: python, not jq, whose numbers may be doubles).
jflat () {
  python3 - "$1" <<'EOF'
import json, sys
def walk(p, d):
    if isinstance(d, dict):
        for k, v in d.items():
            walk(p + [k], v)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            walk(p + [str(i)], v)
    else:
        v = 'null' if d is None else (str(d).lower() if isinstance(d, bool) else d)
        print('/'.join(p) if p else '.', v)
walk([], json.load(open(sys.argv[1])))
EOF
}
# jv PATH: a value from the last jflat output ($T/flat)
jv () { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$T/flat"; }
# jlen: number of elements of the last document (an array)
jlen () {
  python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' \
    "$T/doc.json"
}

# dj LABEL IMG ARGS...: dump --output=json; exit 0 and JSON that parses;
# leaves $T/doc.json and $T/flat.
dj () {
  local label=$1 img=$2
  shift 2
  rm -f "$T/doc.json" "$T/flat"
  if qcowkit dump --output=json "$img" "$@" >"$T/doc.json" 2>"$T/err" \
     && jflat "$T/doc.json" >"$T/flat" 2>/dev/null; then
    pass "$label: dump --output=json $* parses"
  else
    fail "$label: dump --output=json $* parses" "$(head -c 300 "$T/err")"
    : >"$T/flat"
  fi
}
# dh IMG ARGS...: human dump into $T/human (exit status returned)
dh () {
  local img=$1
  shift
  qcowkit dump "$img" "$@" >"$T/human" 2>"$T/err"
}
# hv NAME: the value of a "name  value" line of the human dump
hv () { awk -v k="$1" '$1 == k { print $2; exit }' "$T/human"; }

# ---- images ----
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-img bitmap --add base.qcow2 bm0
qemu-io -f qcow2 -c 'write -P 0x11 0 128k' -c 'write -z 256k 64k' \
  -c 'write -c -P 0x22 1M 64k' -c 'write -P 0x33 7M 100k' base.qcow2 >/dev/null
qemu-img snapshot -c snap1 base.qcow2
qemu-img snapshot -c "second snapshot" base.qcow2
qemu-io -f qcow2 -c 'write -P 0x44 64k 64k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x12 4k 4k' -c 'write -z 64k 8k' \
  -c 'write -P 0x13 130k 3000' ext.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=4k rc1.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x1 0 20k' rc1.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o refcount_bits=64 rc64.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x1 0 200k' rc64.qcow2 >/dev/null
qemu-img snapshot -c s rc64.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x31 0 64k' v2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=2M zstd.qcow2 8M
qemu-io -f qcow2 -c 'write -c -P 0x21 0 2M' zstd.qcow2 >/dev/null
head -c 1000000 /dev/urandom > raw.img

# ---- header ----
FIELDS="magic:0:be32 version:4:be32 backing_file_offset:8:be64
backing_file_size:16:be32 cluster_bits:20:be32 size:24:be64
crypt_method:32:be32 l1_size:36:be32 l1_table_offset:40:be64
refcount_table_offset:48:be64 refcount_table_clusters:56:be32
nb_snapshots:60:be32 snapshots_offset:64:be64"
V3FIELDS="incompatible_features:72:be64 compatible_features:80:be64
autoclear_features:88:be64 refcount_order:96:be32 header_length:100:be32"

check_header () {
  local img=$1 fields=$FIELDS f name off w want bad_j='' bad_h=''
  [ "$(peek "$img" 4 be32)" = 3 ] && fields="$FIELDS $V3FIELDS"
  dj "$img" "$img" header
  dh "$img" header || fail "$img: dump header exits 0"
  for f in $fields; do
    IFS=: read -r name off w <<<"$f"
    want=$(peek "$img" "$off" "$w")
    [ "$(jv "$name")" = "$want" ] || bad_j="$bad_j $name=$(jv "$name")/$want"
    [ -n "$(hv "$name")" ] && [ "$(u64 "$(hv "$name")")" = "$want" ] \
      || bad_h="$bad_h $name=$(hv "$name")/$want"
  done
  if [ -z "$bad_j" ]; then
    pass "$img: every JSON header field equals the bytes at its offset"
  else fail "$img: JSON header fields" "got/want:$bad_j"; fi
  if [ -z "$bad_h" ]; then
    pass "$img: every human header field equals the bytes at its offset"
  else fail "$img: human header fields" "got/want:$bad_h"; fi
  if [ "$(peek "$img" 4 be32)" = 3 ]; then
    want=$(( $(peek "$img" 104 be16) >> 8 ))
    is "$(jv compression_type)" "$want" "$img: compression_type is byte 104"
    is "$(hv compression_type)" "$want" "$img: human compression_type"
  else
    is "$(jv incompatible_features)$(jv header_length)$(jv compression_type)" \
      "" "$img: a v2 header has no v3 fields in JSON"
    is "$(hv incompatible_features)$(hv compression_type)" "" \
      "$img: nor in the human dump"
  fi
}
for i in base ext rc1 rc64 v2 zstd; do check_header $i.qcow2; done
is "$(jv compression_type)" 1 "zstd image: compression_type 1"
dh base.qcow2 header
if grep -q 'autoclear bit 0: bitmaps' "$T/human"; then
  pass "human header names the set feature bits"
else fail "human header names the set feature bits" "$(cat "$T/human")"; fi

# ---- extensions ----
# walk IMG: "offset magic length" for each extension, from the bytes
walk () {
  local img=$1 pos end m l bfo
  end=$((1 << $(peek "$img" 20 be32)))
  bfo=$(peek "$img" 8)
  [ "$bfo" != 0 ] && [ "$bfo" -lt "$end" ] && end=$bfo
  if [ "$(peek "$img" 4 be32)" = 3 ]; then pos=$(peek "$img" 100 be32)
  else pos=72; fi
  while [ $((pos + 8)) -le "$end" ]; do
    m=$(peek "$img" "$pos" be32)
    l=$(peek "$img" $((pos + 4)) be32)
    [ "$m" = 0 ] && break
    echo "$pos $m $l"
    pos=$((pos + 8 + (l + 7) / 8 * 8))
  done
}
for i in base ext zstd v2; do
  want=$(walk $i.qcow2)
  dj $i $i.qcow2 extensions
  got=$(python3 -c 'import json,sys
for e in json.load(open(sys.argv[1])):
    print(e["offset"], int(e["magic"], 16), e["length"])' "$T/doc.json")
  is "$got" "$want" "$i: extensions (offset, magic, length) as walked by peek"
  ok "$i: JSON extension data has length bytes" python3 -c 'import json,sys
sys.exit(not all(len(e["data"]) == e["length"] for e in json.load(open(sys.argv[1]))))' "$T/doc.json"
  dh $i.qcow2 extensions
  is "$(grep -c '^Header extension at' "$T/human")" "$(echo "$want" | grep -c .)" \
    "$i: human dump lists each extension"
done
BMEXT=$(walk base.qcow2 | awk '$2 == 595929205 { print $1 + 8 }')
dh base.qcow2 extensions
is "$(hv nb_bitmaps)" "$(peek base.qcow2 "$BMEXT" be32)" "base: human nb_bitmaps"
is "$(u64 "$(hv bitmap_directory_offset)")" "$(peek base.qcow2 $((BMEXT + 16)))" \
  "base: human bitmap_directory_offset"
if grep -q 'bitmaps' "$T/human" && grep -q 'feature name table' "$T/human"; then
  pass "base: human extension names"
else fail "base: human extension names" "$(cat "$T/human")"; fi

# ---- L1 and L2 ----
for i in base ext rc1 zstd v2; do
  img=$i.qcow2
  l1off=$(peek $img 40)
  l1size=$(peek $img 36 be32)
  cb=$(peek $img 20 be32)
  dj $i $img l1
  is "$(jlen)" "$l1size" "$i: dump l1 has l1_size ($l1size) entries"
  is "$(jv 0)" "$(peek $img "$l1off")" "$i: L1[0] equals the bytes at l1_table_offset"
  dh $img l1
  is "$(awk '$1 == "L1[0]" { print $3 }' "$T/human" | xargs -r printf '%u')" \
    "$(peek $img "$l1off")" "$i: human L1[0]"

  l2off=$(( $(peek $img "$l1off") & OFF_MASK ))
  ext=0
  [ $(( $(peek $img 4 be32) == 3 && ($(peek $img 72) & 16) )) != 0 ] && ext=1
  dj $i $img l2 0
  if [ $ext = 1 ]; then
    is "$(jlen)" $(((1 << cb) / 16)) "$i: extended L2 has cluster_size/16 entries"
    bad=
    for k in 0 1 2 8 $(((1 << cb) / 16 - 1)); do
      [ "$(jv $k/0)" = "$(peek $img $((l2off + 16 * k)))" ] \
        && [ "$(jv $k/1)" = "$(peek $img $((l2off + 16 * k + 8)))" ] \
        || bad="$bad $k"
    done
    is "$bad" "" "$i: extended L2 entries and bitmaps equal the bytes"
  else
    is "$(jlen)" $(((1 << cb) / 8)) "$i: L2 has cluster_size/8 entries"
    bad=
    for k in 0 1 2 4 16 112 $(((1 << cb) / 8 - 1)); do
      [ $k -lt $(((1 << cb) / 8)) ] || continue
      [ "$(jv $k)" = "$(peek $img $((l2off + 8 * k)))" ] || bad="$bad $k"
    done
    is "$bad" "" "$i: L2 entries equal the bytes at L1[0]'s offset"
  fi
  cp "$T/flat" "$T/flat.idx"
  dj "$i @offset" $img l2 "@$l2off"
  ok "$i: l2 @$l2off is the same table as l2 0" cmp -s "$T/flat" "$T/flat.idx"
  dj "$i @hex" $img l2 "@$(printf '0x%x' $l2off)"
  ok "$i: l2 @0x... (hex) is the same table" cmp -s "$T/flat" "$T/flat.idx"
  dh $img l2 0
  if [ $ext = 1 ]; then
    line=$(grep -m1 '^L2\[' "$T/human")
    case $line in *bitmap*) pass "$i: human extended L2 shows bitmaps";;
      *) fail "$i: human extended L2 shows bitmaps" "$line";; esac
  else
    k=$(awk -F'[][]' '/^L2\[/ { print $2; exit }' "$T/human")
    v=$(awk '/^L2\[/ { print $3; exit }' "$T/human")
    is "$(u64 "$v")" "$(peek $img $((l2off + 8 * k)))" \
      "$i: human L2[$k] equals the bytes"
  fi
done

# ---- refcount table and blocks ----
for i in base rc1 rc64 v2; do
  img=$i.qcow2
  rtoff=$(peek $img 48)
  rtcl=$(peek $img 56 be32)
  cb=$(peek $img 20 be32)
  if [ "$(peek $img 4 be32)" = 3 ]; then order=$(peek $img 96 be32); else order=4; fi
  dj $i $img refcount-table
  is "$(jlen)" $((rtcl * (1 << cb) / 8)) "$i: refcount table has clusters*cs/8 entries"
  is "$(jv 0)" "$(peek $img "$rtoff")" "$i: reftable[0] equals the bytes"
  dh $img refcount-table
  is "$(awk '$1 == "reftable[0]" { print $3 }' "$T/human" | xargs -r printf '%u')" \
    "$(peek $img "$rtoff")" "$i: human reftable[0]"
  rb=$(( $(peek $img "$rtoff") & OFF_MASK ))
  dj $i $img refblock 0
  is "$(jlen)" $(((1 << cb) * 8 >> order)) "$i: refblock has cs*8/refcount_bits entries"
  # the refcounts of the first 64 clusters, decoded from the bytes here
  bits=$((1 << order)) bad='' nz=0
  for k in $(seq 0 63); do
    case $bits in
      1) want=$(( ($(peek $img $((rb + k / 8)) be16) >> 8 >> (k % 8)) & 1 )) ;;
      16) want=$(peek $img $((rb + 2 * k)) be16) ;;
      64) want=$(peek $img $((rb + 8 * k))) ;;
      *) want=$(peek $img $((rb + k * bits / 8)) be32) ;;
    esac
    [ "$(jv $k)" = "$want" ] || bad="$bad $k:$(jv $k)/$want"
    [ "$want" = 0 ] || nz=$((nz + 1))
  done
  is "$bad" "" "$i: the first 64 refcounts ($bits-bit) equal the bytes ($nz non-zero)"
  is "$(jv 0)" 1 "$i: the header cluster has refcount 1"
  cp "$T/flat" "$T/flat.idx"
  dj "$i @offset" $img refblock "@$rb"
  ok "$i: refblock @$rb is refblock 0" cmp -s "$T/flat" "$T/flat.idx"
  dh $img refblock 0
  is "$(awk '$1 == "refcount[0]" { print $3 }' "$T/human" | xargs -r printf '%u')" 1 \
    "$i: human refcount[0]"
done
# refcount 2: a cluster shared by a snapshot
dj rc64 rc64.qcow2 refblock 0
l2=$(( $(peek rc64.qcow2 "$(peek rc64.qcow2 40)") & OFF_MASK ))
d0=$(( $(peek rc64.qcow2 "$l2") & OFF_MASK ))
is "$(jv $((d0 >> 16)))" 2 "rc64: a data cluster shared with the snapshot has refcount 2"

# ---- snapshots ----
qemu-img info --output=json base.qcow2 > qinfo.json
dj base base.qcow2 snapshots
is "$(jlen)" 2 "base: two snapshots"
sn=$(peek base.qcow2 64)
pos=$sn bad=
for k in 0 1; do
  il=$(peek base.qcow2 $((pos + 12)) be16)
  nl=$(peek base.qcow2 $((pos + 14)) be16)
  ex=$(peek base.qcow2 $((pos + 36)) be32)
  [ "$(jv $k/entry_offset)" = "$pos" ] || bad="$bad $k:entry_offset"
  [ "$(jv $k/l1_table_offset)" = "$(peek base.qcow2 $pos)" ] || bad="$bad $k:l1_table_offset"
  [ "$(jv $k/l1_size)" = "$(peek base.qcow2 $((pos + 8)) be32)" ] || bad="$bad $k:l1_size"
  [ "$(jv $k/date_sec)" = "$(peek base.qcow2 $((pos + 16)) be32)" ] || bad="$bad $k:date_sec"
  [ "$(jv $k/date_nsec)" = "$(peek base.qcow2 $((pos + 20)) be32)" ] || bad="$bad $k:date_nsec"
  [ "$(jv $k/vm_clock_nsec)" = "$(peek base.qcow2 $((pos + 24)))" ] || bad="$bad $k:vm_clock_nsec"
  [ "$(jv $k/vm_state_size)" = "$(peek base.qcow2 $((pos + 32)) be32)" ] || bad="$bad $k:vm_state_size"
  [ "$(jv $k/extra_data_size)" = "$ex" ] || bad="$bad $k:extra_data_size"
  [ "$ex" -lt 16 ] || [ "$(jv $k/disk_size)" = "$(peek base.qcow2 $((pos + 48)))" ] || bad="$bad $k:disk_size"
  [ "$ex" -lt 24 ] || [ "$(u64 "$(jv $k/icount)")" = "$(peek base.qcow2 $((pos + 56)))" ] || bad="$bad $k:icount"
  [ "$(jv $k/id)" = "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshots"][int(sys.argv[2])]["id"])' qinfo.json $k)" ] || bad="$bad $k:id"
  [ "$(jv $k/name)" = "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshots"][int(sys.argv[2])]["name"])' qinfo.json $k)" ] || bad="$bad $k:name"
  pos=$(( (pos + 40 + ex + il + nl + 7) / 8 * 8 ))
done
is "$bad" "" "base: snapshot fields equal the bytes of each entry (ids, names as qemu-img info)"
dh base.qcow2 snapshots
is "$(grep -c '^Snapshot [0-9]* at' "$T/human")" 2 "base: human dump lists both snapshots"
is "$(hv l1_table_offset | xargs printf '%u')" "$(peek base.qcow2 "$sn")" \
  "base: human l1_table_offset of snapshot 0"
if grep -q '^name  *second snapshot$' "$T/human"; then
  pass "base: a name with a space"; else fail "base: a name with a space"; fi

snl1=$(peek base.qcow2 "$sn")
snl1n=$(peek base.qcow2 $((sn + 8)) be32)
dj base base.qcow2 snapshot-l1 0
is "$(jlen)" "$snl1n" "base: snapshot-l1 0 has the snapshot's l1_size entries"
is "$(jv 0)" "$(peek base.qcow2 "$snl1")" "base: snapshot L1[0] equals the bytes"
dh base.qcow2 snapshot-l1 0
is "$(awk '$1 == "L1[0]" { print $3 }' "$T/human" | xargs -r printf '%u')" \
  "$(peek base.qcow2 "$snl1")" "base: human snapshot L1[0]"
# @OFFSET: the snapshot whose L1 table is at that host offset
dj base base.qcow2 snapshot-l1 0
cp "$T/flat" "$T/flat.idx"
dj "base @offset" base.qcow2 snapshot-l1 "@$snl1"
ok "base: snapshot-l1 @$snl1 (its l1_table_offset) is snapshot-l1 0" \
  cmp -s "$T/flat" "$T/flat.idx"
sn1=$(( (sn + 40 + $(peek base.qcow2 $((sn + 36)) be32) + $(peek base.qcow2 $((sn + 12)) be16) + $(peek base.qcow2 $((sn + 14)) be16) + 7) / 8 * 8 ))
snl1b=$(peek base.qcow2 "$sn1")
dj base base.qcow2 snapshot-l1 1
cp "$T/flat" "$T/flat.idx"
dj "base @hex" base.qcow2 snapshot-l1 "@$(printf '0x%x' "$snl1b")"
ok "base: snapshot-l1 @0x... of the second entry is snapshot-l1 1" \
  cmp -s "$T/flat" "$T/flat.idx"
dh base.qcow2 snapshot-l1 "@$snl1"
is "$(awk '$1 == "L1[0]" { print $3 }' "$T/human" | xargs -r printf '%u')" \
  "$(peek base.qcow2 "$snl1")" "base: human snapshot-l1 @OFFSET"
dj v2 v2.qcow2 snapshots
is "$(jlen)" 0 "v2: no snapshots: an empty array"

# ---- bitmaps ----
bmdir=$(peek base.qcow2 $((BMEXT + 16)))
dj base base.qcow2 bitmaps
is "$(jlen)" 1 "base: one bitmap"
is "$(jv 0/name)" bm0 "base: bitmap name"
is "$(jv 0/entry_offset)" "$bmdir" "base: bitmap entry at the directory offset"
is "$(jv 0/bitmap_table_offset)" "$(peek base.qcow2 "$bmdir")" "base: bitmap table offset"
is "$(jv 0/bitmap_table_size)" "$(peek base.qcow2 $((bmdir + 8)) be32)" "base: bitmap table size"
is "$(jv 0/flags)" "$(peek base.qcow2 $((bmdir + 12)) be32)" "base: bitmap flags"
is "$(jv 0/type)" "$(( $(peek base.qcow2 $((bmdir + 16)) be16) >> 8 ))" "base: bitmap type"
is "$(jv 0/granularity_bits)" "$(( $(peek base.qcow2 $((bmdir + 16)) be16) & 255 ))" \
  "base: bitmap granularity_bits"
gran=$(python3 -c 'import json,sys
print(json.load(open(sys.argv[1]))["format-specific"]["data"]["bitmaps"][0]["granularity"])' qinfo.json)
is "$((1 << $(jv 0/granularity_bits)))" "$gran" "base: granularity as qemu-img info"
dh base.qcow2 bitmaps
is "$(hv name)" bm0 "base: human bitmap name"
is "$(u64 "$(hv bitmap_table_offset)")" "$(peek base.qcow2 "$bmdir")" "base: human bitmap table offset"
bt=$(peek base.qcow2 "$bmdir")
bts=$(peek base.qcow2 $((bmdir + 8)) be32)
dj base base.qcow2 bitmap-table 0
is "$(jlen)" "$bts" "base: bitmap-table 0 has table_size entries"
bad='' nz=0
for ((k = 0; k < bts; k++)); do
  want=$(peek base.qcow2 $((bt + 8 * k)))
  [ "$(jv $k)" = "$want" ] || bad="$bad $k"
  [ "$want" = 0 ] || nz=$((nz + 1))
done
is "$bad" "" "base: bitmap table entries equal the bytes ($nz non-zero)"
ok "base: the bitmap recorded qemu-io's writes" [ "$nz" -gt 0 ]
cp "$T/flat" "$T/flat.idx"
dj "base @offset" base.qcow2 bitmap-table "@$bt"
ok "base: bitmap-table @$bt (its bitmap_table_offset) is bitmap-table 0" \
  cmp -s "$T/flat" "$T/flat.idx"

# ---- 64-bit values: exact decimal digits in the JSON text ----
# L1[0] has the COPIED flag (bit 63): above 2^53, where doubles round
l1e=$(peek base.qcow2 "$(peek base.qcow2 40)")
ok "base: L1[0] ($l1e) is above 2^53" [ "${#l1e}" -ge 19 ]
qcowkit dump --output=json base.qcow2 l1 > "$T/doc.json"
ok "base: the JSON text has L1[0]'s exact decimal digits" \
  grep -qx "    $l1e,\{0,1\}" "$T/doc.json"
qcowkit dump base.qcow2 l1 > "$T/human"
is "$(awk '$1 == "L1[0]" { print $3 }' "$T/human")" "$(printf '0x%016x' "$l1e")" \
  "base: the human dump has it in hexadecimal"

# ---- errors: exit 1 with a message ----
err1 () {  # err1 LABEL ARGS...
  local label=$1 rc
  shift
  qcowkit dump "$@" >"$T/out" 2>"$T/err"
  rc=$?
  if [ $rc = 1 ] && [ -s "$T/err" ]; then pass "$label: exit 1 with a message"
  else fail "$label: exit 1 with a message" "exit $rc: $(head -c 200 "$T/err")"; fi
}
size=$(stat -c %s base.qcow2)
err1 "l2 of an L1 index past the table" base.qcow2 l2 5
err1 "l2 of an unallocated L1 entry" rc1.qcow2 l2 1
err1 "l2 at an unaligned offset" base.qcow2 l2 @0x123
err1 "l2 past EOF" base.qcow2 l2 @$(( (size / 65536 + 4) * 65536 ))
err1 "refblock of an unallocated reftable entry" base.qcow2 refblock 7
err1 "refblock past the refcount table" base.qcow2 refblock 100000
err1 "refblock past EOF (no double free)" base.qcow2 refblock @$(( (size / 65536 + 4) * 65536 ))
err1 "refblock unaligned" base.qcow2 refblock @512
err1 "snapshot-l1 of a missing snapshot" base.qcow2 snapshot-l1 2
err1 "bitmap-table of a missing bitmap" base.qcow2 bitmap-table 1
err1 "snapshot-l1 @OFFSET where no L1 table is" base.qcow2 snapshot-l1 @0x10000
err1 "bitmap-table @OFFSET where no bitmap table is" base.qcow2 bitmap-table @0
qcowkit dump --output=json base.qcow2 snapshot-l1 @0x10000 >"$T/out" 2>"$T/err"
ok "snapshot-l1 @OFFSET not found: the message names the offset" \
  grep -q 'no snapshot has its L1 table at 0x10000' "$T/err"
ok "snapshot-l1 @OFFSET not found: the JSON is still valid (null)" \
  python3 -m json.tool "$T/out"
err1 "a missing file" missing.qcow2 header
err1 "a raw file" raw.img header
err1 "a directory" . header
cp base.qcow2 d.qcow2
qkpoke d.qcow2 36 be32 0xffffffff
err1 "l1 of an L1 too large to read" d.qcow2 l1
cp base.qcow2 d.qcow2
qkpoke d.qcow2 $((sn + 8)) be32 0x100000
err1 "snapshot-l1 past EOF" d.qcow2 snapshot-l1 0
qcowkit dump --output=json d.qcow2 snapshot-l1 0 >"$T/out" 2>/dev/null
ok "a failed JSON dump still prints valid JSON" python3 -m json.tool "$T/out"
# the refcount table read past the file's end reads zeros (like QEMU)
cp base.qcow2 d.qcow2
qkpoke d.qcow2 48 be64 $(( (size / 65536 + 16) * 65536 ))
dj "reftable past EOF" d.qcow2 refcount-table
is "$(jv 0)" 0 "a refcount table past EOF reads as zeros"

# ---- usage errors: exit 2 ----
err2 () {  # err2 LABEL ARGS...
  local label=$1 rc
  shift
  qcowkit dump "$@" >"$T/out" 2>"$T/err"
  rc=$?
  if [ $rc = 2 ] && [ -s "$T/err" ]; then pass "$label: exit 2"
  else fail "$label: exit 2" "exit $rc: $(head -c 200 "$T/err")"; fi
}
err2 "no arguments"
err2 "no structure" base.qcow2
err2 "unknown structure" base.qcow2 bogus
err2 "l2 without an index" base.qcow2 l2
err2 "refblock without an index" base.qcow2 refblock
err2 "snapshot-l1 without an index" base.qcow2 snapshot-l1
err2 "bitmap-table without an index" base.qcow2 bitmap-table
err2 "header with an index" base.qcow2 header 3
err2 "l1 with an index" base.qcow2 l1 0
err2 "too many arguments" base.qcow2 l2 0 1
err2 "a non-numeric index" base.qcow2 l2 abc
err2 "an index with garbage" base.qcow2 l2 1x
err2 "an empty @offset" base.qcow2 l2 @
err2 "a negative index" base.qcow2 l2 -1
err2 "an unknown option" --bogus base.qcow2 header
err2 "--output=xml" --output=xml base.qcow2 header
err2 "--output without a value" base.qcow2 header --output
is "$(qcowkit dump --help >/dev/null 2>&1; echo $?)" 0 "dump --help: exit 0"

# JSON everywhere a dump succeeds
bad=
for w in header extensions l1 "l2 0" refcount-table "refblock 0" snapshots \
         "snapshot-l1 0" "snapshot-l1 1" bitmaps "bitmap-table 0"; do
  # shellcheck disable=SC2086
  qcowkit dump --output=json base.qcow2 $w >"$T/out" 2>/dev/null &&
    python3 -m json.tool "$T/out" >/dev/null 2>&1 || bad="$bad [$w]"
  qcowkit dump base.qcow2 $w >/dev/null 2>&1 || bad="$bad [human $w]"
done
is "$bad" "" "every structure dumps (human and valid JSON) on base"

done_testing
