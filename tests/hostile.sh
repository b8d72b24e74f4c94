#!/bin/bash
# Hostile images: real images made by qemu-img/qemu-io, damaged byte-exactly
# with qkpoke (absurd table sizes, out-of-range fields, tables pointing into
# metadata, unknown feature bits, truncation at every cluster boundary).
# Every command must end with exit 0 or 1 (never a signal, a timeout, or 2),
# say something on stderr when it fails, and print valid JSON with
# --output=json; memory is limited with ulimit -v. Some damage must not
# stop export at all: reading never needs refcounts or the dirty/corrupt
# bits.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"   # json_superset
require qemu-img qemu-io jq
scratch

# ---- limits ----
VLIMIT=2097152            # KiB: 2 GiB of address space per command
if grep -q __asan_init "$(command -v qcowkit)" 2>/dev/null; then
  VLIMIT=                 # ASan needs terabytes of shadow mappings
  diag "sanitizer build: no ulimit -v"
fi

json_ok () {  # exactly one JSON document in FILE (one jq, no subshell)
  jq -e -s 'length == 1' "$1" > /dev/null 2>&1
}

# lim CMD...: run under the limits; stdout to $T/out, stderr to $T/err.
lim () {
  ( if [ -n "$VLIMIT" ]; then ulimit -v "$VLIMIT"; fi
    exec timeout 10 "$@" ) >"$T/out" 2>"$T/err" </dev/null
}

# verdict RC JSON: V = why this run breaks the rules (empty: it does
# not). (Results go in V, not on stdout: a command substitution per
# command would cost a process each.)
verdict () {
  local rc=$1 json=$2
  V=
  if [ "$rc" -eq 124 ]; then V="timed out"; return; fi
  if [ "$rc" -gt 128 ]; then V="killed by signal $((rc - 128))"; return; fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then V="exit $rc"; return; fi
  if [ "$rc" -ne 0 ] && [ ! -s "$T/err" ]; then
    V="exit $rc without a message"; return
  fi
  if [ "$json" = json ] && { [ "$rc" -eq 0 ] || [ -s "$T/out" ]; } \
     && ! json_ok "$T/out"; then
    V="invalid JSON: $(head -c 200 "$T/out")"; return
  fi
}

CMDS=(
  "info"
  "info --output=json"
  "map"
  "map --output=json"
  "export"
  "dump@header"
  "dump@--output=json@header"
  "snapshot list"
)

# run_one IMG CMD: run one of CMDS on IMG; the verdict in V.
run_one () {
  local img=$1 c=$2 rc
  case $c in
    export) lim qcowkit export "$img" "$T/x.raw"; rc=$?; rm -f "$T/x.raw" ;;
    dump@*) local a; IFS=@ read -r -a a <<<"$c"
            lim qcowkit dump "${a[@]:1:$((${#a[@]} - 2))}" "$img" \
                "${a[${#a[@]} - 1]}"; rc=$? ;;
    "snapshot list") lim qcowkit snapshot list "$img"; rc=$? ;;
    *) lim qcowkit $c "$img"; rc=$? ;;
  esac
  case $c in *json*) verdict "$rc" json ;; *) verdict "$rc" "" ;; esac
}

# hammer LABEL IMG: every command, one assertion each.
hammer () {
  local label=$1 img=$2 c v
  for c in "${CMDS[@]}"; do
    run_one "$img" "$c"; v=$V
    if [ -z "$v" ]; then pass "$label: ${c//@/ }"
    else fail "$label: ${c//@/ }: $v" "$(head -c 300 "$T/err")"
    fi
  done
}

# hammer_quiet IMG: every command; HQ = the failures, one a line (for
# loops).
hammer_quiet () {
  local img=$1 c
  HQ=
  for c in "${CMDS[@]}"; do
    run_one "$img" "$c"
    [ -z "$V" ] || HQ="$HQ${HQ:+
}${c//@/ }: $V"
  done
}

peek () { qkpoke "$1" peek "$2" "${3:-be64}"; }
hex () { printf '0x%x' "$1"; }   # bash arithmetic is signed; qkpoke is not
OFF_MASK=0x00fffffffffffe00

# ---- the poke helper itself ----
cd "$T" || exit 1
printf 'abcdefghijklmnop' > p.bin
qkpoke p.bin 2 ff00 && qkpoke p.bin 0x8 be32 0x01020304 && qkpoke p.bin 12 be16 513
is "$(od -An -v -tx1 p.bin | tr -d ' \n')" "6162ff00656667680102030402016f70" \
  "qkpoke writes hex bytes, be32 and be16 where asked"
is "$(qkpoke p.bin peek 8 be32) $(qkpoke p.bin peek 0x8 be64) $(qkpoke p.bin peek 12 be16)" \
  "16909060 72623859739750256 513" "qkpoke peek reads big-endian values"
qkpoke p.bin 0 be64 0xffffffffffffffff
is "$(qkpoke p.bin peek 0 be64)" 18446744073709551615 "qkpoke be64 covers all 64 bits"
qkpoke p.bin truncate 5
is "$(stat -c %s p.bin)" 5 "qkpoke truncate"
qkpoke p.bin peek 2 be32 2>/dev/null
is "$?" 1 "qkpoke peek past EOF: exit 1"
qkpoke "$T/nonexistent" 0 00 2>/dev/null
is "$?" 1 "qkpoke on a missing file: exit 1 (never creates it)"
for bad in "p.bin 0 be32" "p.bin 0 xyz" "p.bin 0 abc" "p.bin -1 00" \
           "p.bin 0 be16 65536" "p.bin 0 be8 1" "p.bin peek 0" "p.bin 0x 00"; do
  # shellcheck disable=SC2086
  qkpoke $bad 2>/dev/null
  is "$?" 2 "qkpoke $bad: usage error (exit 2)"
done
is "$(stat -c %s p.bin)" 5 "usage errors write nothing"

# ---- images ----
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -f qcow2 -c 'write -P 0x11 0 128k' -c 'write -z 256k 64k' \
  -c 'write -c -P 0x22 1M 64k' -c 'write -P 0x33 7M 100k' base.qcow2 >/dev/null
qemu-img snapshot -c snap1 base.qcow2
qemu-io -f qcow2 -c 'write -P 0x44 64k 64k' base.qcow2 >/dev/null
qemu-img bitmap --add base.qcow2 bm0
qemu-img convert -O raw base.qcow2 base.raw

qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 256k
qemu-io -f qcow2 -c 'write -P 0x55 0 3k' -c 'write -z 8k 2k' \
  -c 'write -c -P 0x66 16k 512' -c 'write -P 0x77 200k 1500' small.qcow2 >/dev/null
qemu-img snapshot -c s1 small.qcow2
qemu-io -f qcow2 -c 'write -P 0x78 1k 1k' small.qcow2 >/dev/null

qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k ext.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0x12 4k 4k' -c 'write -z 64k 8k' \
  -c 'write -P 0x13 130k 3000' ext.qcow2 >/dev/null

qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 2M
qemu-io -f qcow2 -c 'write -c -P 0x21 0 64k' -c 'write -c -P 0x22 128k 64k' \
  -c 'write -P 0x23 512k 64k' zstd.qcow2 >/dev/null

qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x31 0 64k' -c 'write -c -P 0x32 256k 64k' \
  v2.qcow2 >/dev/null
qemu-img snapshot -c old v2.qcow2

for i in base small ext zstd v2; do
  ok "$i.qcow2 is clean to qemu-img check" qemu-img check -q $i.qcow2
  hammer "$i (undamaged)" $i.qcow2
done
is "$(qcowkit export base.qcow2 e.raw 2>&1; echo $?)" 0 "base exports"
ok "base export equals qemu-img convert" cmp -s e.raw base.raw

L1OFF=$(peek base.qcow2 40)
RTOFF=$(peek base.qcow2 48)
SNOFF=$(peek base.qcow2 64)
L2OFF=$(( $(peek base.qcow2 "$L1OFF") & OFF_MASK ))
RB0=$(( $(peek base.qcow2 "$RTOFF") & OFF_MASK ))
AUTOCLEAR=$(peek base.qcow2 88)
diag "base: L1 at $L1OFF, L2 at $L2OFF, reftable at $RTOFF, refblock at $RB0, snapshots at $SNOFF"

# damage LABEL POKE-ARGS...: a fresh copy of base, poked; hammered.
# Several pokes are separated by "+".
damage () {
  local label=$1 a=()
  shift
  cp base.qcow2 d.qcow2
  for x in "$@" +; do
    if [ "$x" = + ]; then
      [ ${#a[@]} -eq 0 ] || qkpoke d.qcow2 "${a[@]}" || fail "qkpoke ${a[*]}"
      a=()
    else
      a+=("$x")
    fi
  done
  hammer "$label" d.qcow2
}

# ---- header fields ----
damage "l1_size 0xffffffff"         36 be32 0xffffffff
damage "l1_size 0"                  36 be32 0
damage "l1_size 0x800000"           36 be32 0x800000
damage "l1_table_offset unaligned"  40 be64 $((L1OFF + 8))
damage "l1_table_offset past EOF"   40 be64 0x10000000000
damage "l1_table_offset 2^63"       40 be64 0x8000000000000000
damage "nb_snapshots 0xffffffff"    60 be32 0xffffffff
damage "nb_snapshots 65537"         60 be32 65537
damage "snapshots_offset past EOF"  64 be64 0x10000000000
damage "snapshots_offset unaligned" 64 be64 $((SNOFF + 8))
damage "snapshots_offset 0 with 1 snapshot" 64 be64 0
damage "header_length 0xfffffff0"   100 be32 0xfffffff0
damage "header_length 104"          100 be32 104
damage "header_length 65536"        100 be32 65536
damage "header_length 65544"        100 be32 65544
damage "header_length 0"            100 be32 0
damage "refcount_order 7"           96 be32 7
damage "refcount_order 0xffffffff"  96 be32 0xffffffff
for cb in 0 8 22 31 32 64 0xffffffff; do
  damage "cluster_bits $cb"         20 be32 $cb
done
damage "cluster_bits 9 (tables misread)" 20 be32 9
damage "cluster_bits 21 (tables misread)" 20 be32 21
damage "version 2 (v3 fields read as extensions)" 4 be32 2
damage "version 4"                  4 be32 4
damage "bad magic"                  0 be32 0x514649fa
damage "size 0"                     24 be64 0
damage "size 2^63-1"                24 be64 0x7fffffffffffffff
damage "size 2^44"                  24 be64 0x100000000000
damage "size not a multiple of 512" 24 be64 8388609
damage "crypt_method AES"           32 be32 1
damage "crypt_method LUKS"          32 be32 2
damage "crypt_method 0xffffffff"    32 be32 0xffffffff
damage "compression_type 7"         104 ff
damage "backing file name in the header" 8 be64 16 + 16 be32 100
damage "backing file name past the cluster" 8 be64 65000 + 16 be32 1000
damage "backing_file_offset 2^64-1" 8 be64 0xffffffffffffffff + 16 be32 5
damage "external data file bit, no name" 72 be64 4

# ---- refcount structures ----
damage "refcount table pointing into itself" "$RTOFF" be64 "$RTOFF"
damage "refcount table offset 0"    48 be64 0
damage "refcount table unaligned"   48 be64 $((RTOFF + 8))
damage "refcount_table_clusters 0xffffffff" 56 be32 0xffffffff
damage "refcount table past EOF"    48 be64 0x10000000000
damage "refblock pointing at the L1" "$RTOFF" be64 "$L1OFF"

# ---- L1 and L2 entries ----
damage "L1[0] pointing at the header"  "$L1OFF" be64 0x8000000000000000
damage "L1[0] pointing at the L1"      "$L1OFF" be64 "$L1OFF"
damage "L1[0] pointing at the reftable" "$L1OFF" be64 "$RTOFF"
damage "L1[0] past EOF"                "$L1OFF" be64 0x80000f0000000000
damage "L1[0] unaligned"               "$L1OFF" be64 $((L2OFF + 512))
damage "L1[0] all ones"                "$L1OFF" be64 0xffffffffffffffff
damage "L2[0] pointing at the header"  "$L2OFF" be64 0x8000000000000000
damage "L2[0] pointing at the reftable" "$L2OFF" be64 "$(hex $((RTOFF | (1 << 63))))"
damage "L2[0] pointing at the L2"      "$L2OFF" be64 "$L2OFF"
damage "L2[0] unaligned"               "$L2OFF" be64 $((0x50000 + 4096))
damage "L2[0] past EOF"                "$L2OFF" be64 0x80000f0000000000
damage "L2[0] compressed past EOF"     "$L2OFF" be64 0x4000f00000000000
damage "L2[0] compressed over the header" "$L2OFF" be64 0x4ff0000000000000
damage "L2[0] all ones"                "$L2OFF" be64 0xffffffffffffffff
damage "L2 table all 0xff" "$L2OFF" \
  "$(printf 'ff%.0s' $(seq 1 512))"

# ---- feature bits ----
damage "dirty bit"                  72 be64 1
damage "corrupt bit"                72 be64 2
damage "unknown incompatible bit 9" 72 be64 512
damage "all incompatible bits"      72 be64 0xffffffffffffffff
damage "unknown compatible bits"    80 be64 0xfffffffffffffffe
damage "unknown autoclear bit 5"    88 be64 $((AUTOCLEAR | 32))

# ---- extensions, snapshots, bitmaps ----
damage "first extension length 0xffffffff" 116 be32 0xffffffff
damage "first extension magic 0 (end)" 112 be32 0
damage "extension area all 0xff" 112 "$(printf 'ff%.0s' $(seq 1 400))"
SE=$SNOFF
damage "snapshot l1_size 0xffffffff"      $((SE + 8)) be32 0xffffffff
damage "snapshot L1 past EOF"             "$SE" be64 0x10000000000
damage "snapshot L1 unaligned"            "$SE" be64 $(( $(peek base.qcow2 "$SE") + 8 ))
damage "snapshot id_str_size 0xffff"      $((SE + 12)) be16 0xffff
damage "snapshot name_size 0xffff"        $((SE + 14)) be16 0xffff
damage "snapshot extra_data_size 0xffffffff" $((SE + 36)) be32 0xffffffff
damage "snapshot extra_data_size 1025"    $((SE + 36)) be32 1025
damage "snapshot disk_size 2^63"          $((SE + 48)) be64 0x8000000000000000

# the bitmaps extension: find it
BMEXT=
pos=112
while [ "$pos" -lt 4096 ]; do
  m=$(peek base.qcow2 $pos be32); l=$(peek base.qcow2 $((pos + 4)) be32)
  [ "$m" = 0 ] && break
  if [ "$m" = $((0x23852875)) ]; then BMEXT=$((pos + 8)); break; fi
  pos=$((pos + 8 + (l + 7) / 8 * 8))
done
if [ -n "$BMEXT" ]; then
  BMDIR=$(peek base.qcow2 $((BMEXT + 16)))
  damage "bitmaps: nb_bitmaps 0xffffffff"   "$BMEXT" be32 0xffffffff
  damage "bitmaps: directory 2^62 bytes"    $((BMEXT + 8)) be64 0x4000000000000000
  damage "bitmaps: directory past EOF"      $((BMEXT + 16)) be64 0x10000000000
  damage "bitmaps: directory unaligned"     $((BMEXT + 16)) be64 $((BMDIR + 8))
  damage "bitmap table size 0xffffffff"     $((BMDIR + 8)) be32 0xffffffff
  damage "bitmap table past EOF"            "$BMDIR" be64 0x10000000000
  damage "bitmap name_size 0xffff"          $((BMDIR + 18)) be16 0xffff
  damage "bitmap extra_data_size 0xffffffff" $((BMDIR + 20)) be32 0xffffffff
else
  fail "the bitmaps extension of base.qcow2 was not found"
fi

# ---- behaviours: reading never needs refcounts or the dirty/corrupt bits ----
# export_same LABEL: d.qcow2 exports and equals base.raw
export_same () {
  rm -f e.raw
  lim qcowkit export d.qcow2 e.raw
  local rc=$?
  if [ "$rc" -eq 0 ] && cmp -s e.raw base.raw; then pass "$1"
  else fail "$1" "exit $rc: $(head -c 300 "$T/err")"
  fi
}
fresh () { cp base.qcow2 d.qcow2; }

fresh; qkpoke d.qcow2 72 be64 1
export_same "dirty bit: export equals qemu-img convert of the clean image"
fresh; qkpoke d.qcow2 72 be64 2
export_same "corrupt bit: export equals qemu-img convert"
fresh; qkpoke d.qcow2 72 be64 3
export_same "dirty and corrupt bits: export equals qemu-img convert"
fresh; qkpoke d.qcow2 88 be64 $((AUTOCLEAR | 32))
export_same "unknown autoclear bit 5: export equals qemu-img convert"
fresh; qkpoke d.qcow2 80 be64 0xfffffffffffffffe
export_same "unknown compatible bits: export equals qemu-img convert"
fresh; dd if=/dev/zero of=d.qcow2 bs=65536 seek=$((RTOFF / 65536)) count=1 \
  conv=notrunc status=none
export_same "refcount table zeroed: export equals qemu-img convert"
fresh; dd if=/dev/zero of=d.qcow2 bs=65536 seek=$((RB0 / 65536)) count=1 \
  conv=notrunc status=none
export_same "refcount block zeroed: export equals qemu-img convert"
fresh; qkpoke d.qcow2 48 be64 0x10000000000; qkpoke d.qcow2 56 be32 0xffffffff
export_same "refcount table offset and size absurd: export equals"
fresh; qkpoke d.qcow2 96 be32 7
export_same "refcount_order 7: export equals qemu-img convert"
fresh; qkpoke d.qcow2 "$RTOFF" be64 "$RTOFF"
export_same "refcount table pointing into itself: export equals"
fresh; qkpoke d.qcow2 60 be32 0xffffffff
export_same "nb_snapshots 0xffffffff: export of the active layer equals"
fresh; qkpoke d.qcow2 116 be32 0xffffffff
export_same "damaged extension area: export equals"

fresh; qkpoke d.qcow2 72 be64 512
rm -f e.raw
lim qcowkit export d.qcow2 e.raw
rc=$?
is "$rc" 1 "unknown incompatible bit 9: export refuses (exit 1)"
if grep -q 'bit 9' "$T/err"; then pass "the refusal names bit 9"
else fail "the refusal names bit 9" "$(cat "$T/err")"; fi
if grep -qi 'force' "$T/err"; then pass "the refusal mentions --force"
else fail "the refusal mentions --force" "$(cat "$T/err")"; fi
lim qcowkit export --force d.qcow2 e.raw
rc=$?
if [ "$rc" -eq 0 ] && cmp -s e.raw base.raw; then
  pass "unknown incompatible bit 9 with --force: export equals"
else fail "unknown incompatible bit 9 with --force: export equals" \
  "exit $rc: $(head -c 300 "$T/err")"; fi

fresh; qkpoke d.qcow2 "$L2OFF" be64 "$(hex $((RTOFF | (1 << 63))))"
rm -f e.raw
lim qcowkit export d.qcow2 e.raw
rc=$?
if [ "$rc" -eq 0 ] && cmp -s <(head -c 65536 e.raw) \
     <(dd if=base.qcow2 bs=65536 skip=$((RTOFF / 65536)) count=1 status=none) \
   && cmp -s <(tail -c +65537 e.raw) <(tail -c +65537 base.raw); then
  pass "L2[0] pointing at the refcount table: guest cluster 0 is its bytes"
else fail "L2[0] pointing at the refcount table" "exit $rc"; fi

fresh; qkpoke d.qcow2 "$L2OFF" be64 $((0x50000 + 4096))
lim qcowkit export d.qcow2 e.raw
rc=$?
if [ "$rc" -eq 1 ] && grep -qi 'align' "$T/err"; then
  pass "L2[0] unaligned: export fails with a message about alignment"
else fail "L2[0] unaligned: export fails about alignment" "exit $rc: $(cat "$T/err")"; fi

fresh; qkpoke d.qcow2 36 be32 0xffffffff
lim qcowkit info d.qcow2
rc=$?
if [ "$rc" -le 1 ] && grep -q 'L1' "$T/err"; then
  pass "l1_size 0xffffffff: info warns about the L1 table"
else fail "l1_size 0xffffffff: info warns about the L1" "exit $rc: $(cat "$T/err")"; fi
lim qcowkit export d.qcow2 e.raw
is "$?" 1 "l1_size 0xffffffff: export fails"

fresh; qkpoke d.qcow2 20 be32 22
lim qcowkit info d.qcow2
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'cluster_bits' "$T/err"; then
  pass "cluster_bits 22: info fails naming cluster_bits"
else fail "cluster_bits 22: info fails naming cluster_bits" "exit $rc: $(cat "$T/err")"; fi

fresh; qkpoke d.qcow2 60 be32 0xffffffff
lim qcowkit snapshot list d.qcow2
rc=$?
if [ "$rc" -eq 1 ] && grep -q snap1 "$T/out" && [ -s "$T/err" ]; then
  pass "nb_snapshots 0xffffffff: snapshot list shows snap1 and fails with a message"
else fail "nb_snapshots 0xffffffff: snapshot list" "exit $rc: $(cat "$T/err")"; fi

# ---- names from the image are arbitrary bytes: JSON stays valid UTF-8 ----
# control characters, a quote, a backslash, a stray byte, an overlong NUL, a
# UTF-16 surrogate, a code point above U+10FFFF, then a valid euro sign
NASTY=01225cffc080eda080f4908080e282ac
strict_json () {  # strict_json LABEL CMD...: exit 0 and strict UTF-8 JSON
  local label=$1 rc
  shift
  lim "$@"
  rc=$?
  if [ $rc -eq 0 ] && python3 -c 'import json,sys
d = json.load(open(sys.argv[1], encoding="utf-8", errors="strict"))
sys.exit(0 if "\u20ac" in json.dumps(d, ensure_ascii=False) else 1)' "$T/out" 2>/dev/null
  then pass "$label"
  else fail "$label" "exit $rc: $(head -c 200 "$T/out")"; fi
}
fresh
il=$(peek d.qcow2 $((SNOFF + 12)) be16)
ex=$(peek d.qcow2 $((SNOFF + 36)) be32)
qkpoke d.qcow2 $((SNOFF + 14)) be16 16
qkpoke d.qcow2 $((SNOFF + 40 + ex + il)) $NASTY
strict_json "hostile snapshot name: info --output=json is valid UTF-8 JSON" \
  qcowkit info --output=json d.qcow2
strict_json "hostile snapshot name: snapshot list --output=json" \
  qcowkit snapshot list --output=json d.qcow2
strict_json "hostile snapshot name: dump --output=json snapshots" \
  qcowkit dump --output=json d.qcow2 snapshots
if [ -n "$BMEXT" ]; then
  fresh
  ex=$(peek d.qcow2 $((BMDIR + 20)) be32)
  qkpoke d.qcow2 $((BMDIR + 18)) be16 16
  qkpoke d.qcow2 $((BMEXT + 8)) be64 $(( (24 + ex + 16 + 7) / 8 * 8 ))
  qkpoke d.qcow2 $((BMDIR + 24 + ex)) $NASTY
  strict_json "hostile bitmap name: dump --output=json bitmaps" \
    qcowkit dump --output=json d.qcow2 bitmaps
  lim qcowkit info --output=json d.qcow2
  if [ $? -le 1 ] && python3 -c 'import json,sys
json.load(open(sys.argv[1], encoding="utf-8", errors="strict"))' "$T/out" 2>/dev/null
  then pass "hostile bitmap name: info --output=json is valid UTF-8 JSON"
  else fail "hostile bitmap name: info --output=json" "$(head -c 200 "$T/out")"; fi
fi

# ---- map --force, as export --force ----
fresh; qkpoke d.qcow2 72 be64 512
lim qcowkit map --output=json d.qcow2
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'bit 9' "$T/err" && grep -qi 'force' "$T/err"; then
  pass "unknown incompatible bit 9: map refuses, naming the bit and --force"
else fail "unknown incompatible bit 9: map refuses" "exit $rc: $(cat "$T/err")"; fi
# The map reports holes of the host file as zero (as QEMU does), and a
# copy need not have the holes of its original: compare with the map of
# a copy made the same way.
fresh; qcowkit map --output=json d.qcow2 > "$T/map.base" 2>/dev/null
fresh; qkpoke d.qcow2 72 be64 512
lim qcowkit map --force --output=json d.qcow2
rc=$?
if [ "$rc" -eq 0 ] && cmp -s "$T/out" "$T/map.base" && grep -q 'bit 9' "$T/err"; then
  pass "unknown incompatible bit 9 with map --force: the map of the image without it, and a warning"
else fail "map --force" "exit $rc: $(head -c 300 "$T/err")" \
  "$(diff "$T/map.base" "$T/out" | head -6 | tr "\n" " ")"; fi
for bits in "72 be64 2" "72 be64 3" "88 be64 $((AUTOCLEAR | 32))"; do
  fresh
  # shellcheck disable=SC2086
  qkpoke d.qcow2 $bits
  lim qcowkit map --output=json d.qcow2
  rc=$?
  if [ "$rc" -eq 0 ] && cmp -s "$T/out" "$T/map.base"; then
    pass "poke $bits (corrupt/dirty/unknown autoclear): map needs no --force"
  else fail "poke $bits: map needs no --force" "exit $rc: $(head -c 300 "$T/err")" \
    "$(diff "$T/map.base" "$T/out" | head -6 | tr "\n" " ")"; fi
done

# ---- backing file names and the end marker, as qemu-img reads them ----
# same_info LABEL IMG: qemu-img info opens IMG and ours is a superset
same_info () {
  if qemu-img info --output=json "$2" > "$T/q.json" 2> "$T/q.err" \
     && qcowkit info --output=json "$2" > "$T/o.json" 2> "$T/o.err" \
     && json_superset "$T/q.json" "$T/o.json"; then
    pass "$1: info is a superset of qemu-img info"
  else fail "$1: info is a superset of qemu-img info" \
    "$(cat "$T/q.err" "$T/o.err" | head -c 300)"; fi
}
# an offset and no name (qemu-img rebase -u -b "" on some versions)
fresh; qkpoke d.qcow2 8 be64 0x1000; qkpoke d.qcow2 16 be32 0
same_info "backing_file_offset 0x1000, size 0" d.qcow2
is "$(jq -r '.["backing-filename"] // "none", (.qcowkit.warnings | length)' "$T/o.json" | tr '\n' ' ')" \
  "none 0 " "backing_file_offset 0x1000, size 0: no backing file, no warning"
lim qcowkit export d.qcow2 e.raw
if [ $? -eq 0 ] && cmp -s e.raw base.raw; then
  pass "backing_file_offset 0x1000, size 0: export equals"
else fail "backing_file_offset 0x1000, size 0: export equals" "$(cat "$T/err")"; fi
fresh; qkpoke d.qcow2 8 be64 65536
same_info "backing_file_offset == cluster size, size 0" d.qcow2
is "$(jq -r '.qcowkit.unreadable // "readable"' "$T/o.json")" readable \
  "backing_file_offset == cluster size, size 0: readable"
fresh; qkpoke d.qcow2 8 be64 65536; qkpoke d.qcow2 16 be32 1
qemu-img info d.qcow2 >/dev/null 2>&1
is "$?" 1 "backing_file_offset == cluster size, size 1: qemu-img refuses"
lim qcowkit info --output=json d.qcow2
is "$(jq -r '.qcowkit.unreadable' "$T/out")" "the backing file name is invalid" \
  "backing_file_offset == cluster size, size 1: invalid for us too"
# a name starting with NUL
fresh; qkpoke d.qcow2 8 be64 0x1000; qkpoke d.qcow2 16 be32 4
qkpoke d.qcow2 0x1000 00616263
same_info "a backing file name starting with NUL" d.qcow2
if jq -e '(has("backing-filename") | not) and (.qcowkit.warnings | any(test("NUL")))' \
     "$T/o.json" >/dev/null; then
  pass "a backing file name starting with NUL: no backing file, a warning"
else fail "a backing file name starting with NUL" "$(jq -c .qcowkit.warnings "$T/o.json")"; fi
# the end marker's length is checked too
fresh; qkpoke d.qcow2 112 be32 0; qkpoke d.qcow2 116 be32 0x10000
qemu-img info d.qcow2 > /dev/null 2> "$T/q.err"
if grep -q 'Header extension too large' "$T/q.err"; then
  pass "end marker of length 0x10000: qemu-img says Header extension too large"
else fail "end marker of length 0x10000: qemu-img refuses" "$(cat "$T/q.err")"; fi
lim qcowkit info d.qcow2
rc=$?
if [ $rc -eq 0 ] && grep -q 'end marker.*Header extension too large' "$T/err"; then
  pass "end marker of length 0x10000: info shows the image and says why QEMU refuses it"
else fail "end marker of length 0x10000: info warns" "exit $rc: $(cat "$T/err")"; fi
export_same "end marker of length 0x10000: export equals"

# ---- LUKS: what qemu-img info shows, read from the header without a key ----
S="--object secret,id=s0,data=pw"
L="encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"
# mkcrypt IMG SIZE OPTIONS: qemu-img create with a key; timing the PBKDF
# fails now and then ("Unable to get accurate CPU usage": 32768 rounds of
# a fast hash such as sha1 can take less than the clock's tick), a third
# of the tries on an idle machine, half under load (eight failed in a row
# once), so retry up to 40 times (a few milliseconds each)
mkcrypt () {
  local k
  for k in $(seq 1 40); do
    qemu-img create -q -f qcow2 $S -o "$3" "$1" "$2" 2>"$T/mk.err" && return 0
  done
  fail "qemu-img create $1" "$(cat "$T/mk.err")"
}
mkcrypt luks.qcow2 4M "$L"
mkcrypt luks-essiv.qcow2 1M "$L,encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha512,cluster_size=4k"
mkcrypt luks-df.qcow2 1M "$L,encrypt.cipher-alg=serpent-192,encrypt.cipher-mode=xts,encrypt.hash-alg=sha1,data_file=luks-df.data"
mkcrypt aes.qcow2 1M encrypt.format=aes,encrypt.key-secret=s0
for k in 1 2 3 4 5 6 7 8; do
  qemu-img amend $S --object secret,id=s1,data=pw2 -o encrypt.keyslot=3,encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10 \
    --image-opts driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=s0 2>/dev/null && break
done
for i in luks luks-essiv luks-df aes; do
  ok "$i.qcow2 was made" test -s $i.qcow2
  same_info "$i" $i.qcow2
  qemu-img info $i.qcow2 > "$T/q.txt" 2>/dev/null
  qcowkit info $i.qcow2 2>/dev/null | sed '/^qcowkit details:/,$d' > "$T/o.txt"
  if cmp -s "$T/q.txt" "$T/o.txt"; then
    pass "$i: human info is qemu-img's text"
  else fail "$i: human info is qemu-img's text" "$(diff "$T/q.txt" "$T/o.txt" | head -12)"; fi
  is "$(jq -c '.qcowkit.warnings' "$T/o.json")" "[]" "$i: no warning"
  hammer "$i" $i.qcow2
done
slots='[.["format-specific"].data.encrypt.slots[].active | tostring] | join(",")'
is "$(qcowkit info --output=json luks.qcow2 | jq -r "$slots")" \
  "$(qemu-img info --output=json luks.qcow2 | jq -r "$slots")" \
  "luks: the active key slots are qemu-img's"
# where the LUKS header is: the extension's offset and length
pos=$(peek luks.qcow2 100 be32)
while [ "$(peek luks.qcow2 "$pos" be32)" != $((0x0537be77)) ] && [ "$pos" -lt 4096 ]; do
  pos=$((pos + 8 + ($(peek luks.qcow2 $((pos + 4)) be32) + 7) / 8 * 8))
done
LHOFF=$(peek luks.qcow2 $((pos + 8)))
LHLEN=$(peek luks.qcow2 $((pos + 16)))
qcowkit info --output=json luks.qcow2 > "$T/o.json"
is "$(jq -r '.qcowkit["luks-header"] | "\(.offset) \(.length) \(.readable) \(.version) \(.["cipher-mode"]) \(.slots | length)"' "$T/o.json")" \
  "$LHOFF $LHLEN true 1 xts-plain64 8" "luks: luks-header has the extension's offset and length and the header's fields"
is "$(jq -r '.qcowkit["luks-header"].uuid' "$T/o.json")" \
  "$(qemu-img info --output=json luks.qcow2 | jq -r '.["format-specific"].data.encrypt.uuid')" \
  "luks: the uuid is qemu-img's"
qcowkit info luks.qcow2 > "$T/o.txt" 2>/dev/null
if grep -q "LUKS header: $LHLEN bytes at $(printf '0x%x' "$LHOFF"), LUKS1 aes xts-plain64 sha256" "$T/o.txt"; then
  pass "luks: qcowkit details say where the LUKS header is"
else fail "luks: qcowkit details say where the LUKS header is" "$(grep LUKS "$T/o.txt")"; fi
# damaged LUKS headers: qemu-img refuses, we show what we can
# luks_damage LABEL WANT-WARNING POKE-ARGS...
luks_damage () {
  local label=$1 want=$2
  shift 2
  cp luks.qcow2 d.qcow2
  qkpoke d.qcow2 "$@"
  hammer "LUKS $label" d.qcow2
  lim qcowkit info --output=json d.qcow2
  if [ $? -eq 0 ] && jq -e --arg w "$want" \
       '.qcowkit.warnings | any(test($w))' "$T/out" >/dev/null; then
    pass "LUKS $label: info warns ($want)"
  else fail "LUKS $label: info warns ($want)" "$(jq -c .qcowkit.warnings "$T/out" 2>&1)"; fi
  if qemu-img info d.qcow2 >/dev/null 2>&1; then
    fail "LUKS $label: qemu-img refuses it"
  else pass "LUKS $label: qemu-img refuses it"; fi
}
luks_damage "bad magic" "magic" "$LHOFF" 00
luks_damage "version 2" "version 2" $((LHOFF + 6)) be16 2
luks_damage "unknown cipher" "not supported" $((LHOFF + 8)) 78797a00
luks_damage "slot 0 stripes 0" "stripes == 0" $((LHOFF + 208 + 44)) be32 0
luks_damage "slot 5 state garbage" "slot 5 state" $((LHOFF + 208 + 48 * 5)) be32 0x12345678
luks_damage "payload offset 0" "overlaps the encrypted payload" $((LHOFF + 104)) be32 0
luks_damage "all-ones key bytes" "LUKS" $((LHOFF + 108)) be32 0xffffffff
luks_damage "header pointer unaligned" "not cluster aligned" $((pos + 8)) be64 $((LHOFF + 512))
luks_damage "header area 100 bytes" "shorter than a LUKS header" $((pos + 16)) be64 100
luks_damage "header pointer past EOF" "LUKS header" $((pos + 8)) be64 0x10000000000

# ---- truncation at every cluster boundary ----
for i in base small ext zstd v2; do
  size=$(stat -c %s $i.qcow2)
  cs=$((1 << $(peek $i.qcow2 20 be32)))
  lens="0 1 3 4 71 72 103 104 105 111 112 $((cs / 2))"
  for ((k = 1; k * cs <= size; k++)); do
    [ $k -gt 8 ] || lens="$lens $((k * cs - 1))"
    lens="$lens $((k * cs))"
  done
  lens="$lens $((size - 1))"
  # one copy, truncated shorter and shorter (the commands only read it):
  # each length once, longest first; then the lengths in their order
  cp $i.qcow2 t.qcow2
  declare -A res=()
  for l in $(printf '%s\n' $lens | sort -rnu); do
    qkpoke t.qcow2 truncate "$l"
    hammer_quiet t.qcow2
    res[$l]=$HQ
  done
  bad=
  n=0
  for l in $lens; do
    r=${res[$l]}
    n=$((n + 1))
    [ -z "$r" ] || bad="$bad
length $l: $r"
  done
  unset res
  if [ -z "$bad" ]; then
    pass "$i.qcow2 truncated at $n lengths (every cluster boundary): all commands behave"
  else
    fail "$i.qcow2 truncated at $n lengths: all commands behave" "$(echo "$bad" | head -20)"
  fi
done

# ---- an L1 table whose entries all point at one L2 table ----
# Every distinct L2 table is walked once, with the number of L1 entries
# pointing at it: the work must not be l1_size times the entries of a
# table (a fuzzer found check taking minutes; qemu-img check takes 5 min
# on the 1 PiB image). Each host cluster mapped twice is named once.
shared_l1 () {  # IMG SIZE: data in the first L2 table, then every L1 entry = L1[0]
  qemu-img create -q -f qcow2 "$1" "$2"
  qemu-io -f qcow2 -c 'write -P 1 0 256k' "$1" >/dev/null
  local l1 n k
  l1=$(peek "$1" 40 be64); n=$(peek "$1" 36 be32)
  dd if="$1" of=e.bin bs=8 skip=$((l1 / 8)) count=1 status=none
  for ((k = 1; k < n; k *= 2)); do cat e.bin e.bin > e2.bin; mv e2.bin e.bin; done
  dd if=e.bin of="$1" bs=8 seek=$((l1 / 8)) count="$n" conv=notrunc status=none
  rm -f e.bin
}
shared_l1 shared-small.qcow2 1T      # 2048 L1 entries
qemu-img check --output=json shared-small.qcow2 > "$T/q.json" 2>/dev/null
qrc=$?
lim qcowkit check --output=json shared-small.qcow2
rc=$?
is "$rc $(jq -c '[.corruptions, .leaks // 0]' "$T/out")" \
   "$qrc $(jq -c '[.corruptions, .leaks // 0]' "$T/q.json")" \
   "L1 of 2048 entries all at one L2 table: exit, corruptions and leaks as qemu-img check"
is "$(jq '[.problems[] | select(.name == "DUPLICATE_MAPPING")] | length' "$T/out")" 4 \
   "L1 of 2048 entries all at one L2 table: each of the 4 host clusters mapped twice is named once"
shared_l1 shared.qcow2 1P            # 2 Mi L1 entries
( if [ -n "$VLIMIT" ]; then ulimit -v "$VLIMIT"; fi
  exec timeout 120 qcowkit check --output=json shared.qcow2 ) >"$T/out" 2>"$T/err"
rc=$?
if [ "$rc" -eq 2 ] && [ "$(jq .corruptions "$T/out")" = 10158090 ]; then
  pass "L1 of 2 Mi entries all at one L2 table: check completes (10158090 corruptions, as qemu-img counts them)"
else fail "L1 of 2 Mi entries all at one L2 table: check completes" \
  "exit $rc: $(head -c 300 "$T/err")"; fi
rm -f shared.qcow2 shared-small.qcow2

done_testing
