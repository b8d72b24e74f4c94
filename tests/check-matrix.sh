#!/bin/bash
# The generated damage matrix: the damage classes of the check catalog on
# images the hand-written catalog does not have (512 B, 4 KiB and 2 MiB
# clusters; refcount widths 1, 8, 16, 32 and 64; many L2 tables and
# refcount blocks, damaged in the middle ones, not the first; snapshots;
# compressed clusters; extended L2), and those of iotests 060 and 080 that
# depend on the layout (the header cluster's refcount 0; compressed
# clusters, made in every configuration: two sharing a host cluster, which
# is legal, their refcount too low, one past the end of the file, one
# inside a normal data cluster). Each image is made by qemu-img and
# qemu-io, damaged by the functions below, then:
#   - qcowkit check --output=json against qemu-img check --output=json:
#     the same exit status and the same corruptions, leaks, check-errors,
#     image-end-offset, total-clusters, allocated-clusters,
#     fragmented-clusters and compressed-clusters, where qemu-img gives a
#     report ("not comparable" otherwise, counted and listed, never a pass);
#   - qcowkit check -r all against qemu-img check -r all on copies:
#     qemu-img check finds no more corruptions and leaks after ours, and
#     qemu-img compare finds the guest data of the original unchanged
#     unless the repair reported lost ranges; a second repair changes
#     nothing.
# MATRIX_SHARD=K/N runs every Nth combination from the Kth
# (tests/check-matrix-K.sh).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq qkpoke
scratch
srcdir=$(cd "$srcdir" && pwd)
. "$srcdir/tests/check/functions.sh"
shard=${MATRIX_SHARD:-1/1}
shard_k=${shard%/*} shard_n=${shard#*/}

# ---- images ----
# each writes $IMG; SIZE is the virtual size
spread () {  # spread COUNT STEP LEN [FLAGS]: COUNT writes of LEN every STEP
  local a=() k
  for (( k = 0; k < $1; k++ )); do
    a+=(-c "write $4 -P $(( k % 200 + 1 )) $(( k * $2 )) $3")
  done
  qemu-io -f qcow2 "${a[@]}" "$IMG" > /dev/null
}
cfg_c512_rc16 () { SIZE=4M mkimg -o cluster_size=512; spread 64 65536 4096; }
cfg_c4k_rc16 () { SIZE=64M mkimg -o cluster_size=4096; spread 64 1048576 262144; }
cfg_c4k_rc64 () { SIZE=64M mkimg -o cluster_size=4096,refcount_bits=64; spread 32 2097152 65536; }
cfg_c2m_rc64 () { SIZE=64M mkimg -o cluster_size=2M,refcount_bits=64; spread 3 8388608 2097152; }
cfg_c64k_rc1 () { SIZE=256M mkimg -o refcount_bits=1; spread 16 16777216 131072; }
cfg_c64k_rc8_snap () {
  SIZE=256M mkimg -o refcount_bits=8; spread 16 16777216 131072
  qemu-img snapshot -c s1 "$IMG"; spread 8 16777216 65536
}
cfg_c64k_rc32_comp () {
  SIZE=256M mkimg -o refcount_bits=32; spread 16 16777216 131072 -c
}
cfg_c64k_extl2 () {
  SIZE=256M mkimg -o extended_l2=on; spread 16 16777216 131072
  qemu-io -f qcow2 -c 'write -P 9 4096 4096' "$IMG" > /dev/null
}
configs="c512_rc16 c4k_rc16 c4k_rc64 c2m_rc64 c64k_rc1 c64k_rc8_snap
         c64k_rc32_comp c64k_extl2"

# ---- where to damage: the middle ones ----
# Each damage reads the header once (_hdr, tests/check/functions.sh) and
# each table it scans with one od and one awk: process creation is what
# costs here. The _ helpers leave their result in REPLY.
# allocated OFF COUNT WIDTH [first]: the line numbers (from 1) of the
# COUNT entries of WIDTH bytes at OFF whose offset bits (bytes 1..6) are
# not all zero (with "first": the first one only)
allocated () {
  od -An -v -tx1 -w"$3" -j "$(( $1 ))" -N "$(( $2 * $3 ))" "$IMG" |
    awk -v first="${4:-}" '{ gsub(/ /, "") }
      substr($0, 3, 12) ~ /[1-9a-f]/ { print NR; if (first != "") exit }'
}
# _mid_l1: the middle of the allocated active L1 entries
_mid_l1 () {
  local used o
  _hf 40 8; o=$REPLY; _hf 36 4
  mapfile -t used < <(allocated "$o" "$(( REPLY ))" 8)
  REPLY=$(( used[${#used[@]} / 2] - 1 ))
}
# _first_entry I: the first allocated entry of L2 table I
_first_entry () {
  local j o w
  _l2_off "$1"; o=$REPLY; _l2e_size; w=$REPLY; _cs
  j=$(allocated "$o" $(( REPLY / w )) "$w" first)
  REPLY=$(( ${j:-1} - 1 ))
}
# _mid_entry: M and J, the middle L1 entry and the first allocated entry
# of its L2 table
_mid_entry () { _mid_l1; M=$REPLY; _first_entry "$M"; J=$REPLY; }
_rorder () { _hf 96 4; REPLY=$(( REPLY )); }
# refcount access for every width: QEMU keeps sub-byte refcounts from the
# low bits of each byte up
_rc_loc () {  # _rc_loc HOST: RC_A RC_S RC_W, the block byte, shift, width
  local c k per i
  _rorder; RC_W=$(( 1 << REPLY )); _cs; c=$REPLY
  per=$(( c * 8 / RC_W )); k=$(( $1 / c ))
  _rte $(( k / per ))
  i=$(( k % per ))
  RC_A=$(( (REPLY & ~0x1ff) + i * RC_W / 8 )) RC_S=$(( (i * RC_W) % 8 ))
}
_get_rc () {
  _rc_loc "$1"
  case $RC_W in
    1|2|4) _peek 1 "$RC_A"; REPLY=$(( (REPLY >> RC_S) & ((1 << RC_W) - 1) )) ;;
    *) _peek $(( RC_W / 8 )) "$RC_A"; REPLY=$(( REPLY )) ;;
  esac
}
_set_rc () {
  local b
  _rc_loc "$1"
  case $RC_W in
    1|2|4) _peek 1 "$RC_A"
           b=$(( (REPLY & ~(((1 << RC_W) - 1) << RC_S)) | ($2 << RC_S) ))
           printf -v b %02x "$b"; pokehex "$RC_A" "$b" ;;
    8) printf -v b %02x "$2"; pokehex "$RC_A" "$b" ;;
    16) poke16 "$RC_A" "$2" ;;
    32) poke32 "$RC_A" "$2" ;; 64) poke64 "$RC_A" "$2" ;;
  esac
}
_past_end () {
  local c; _cs; c=$REPLY
  REPLY=$(( ($(file_len) / c + 64) * c ))
}
# _set_l2e I J VALUE: (with the header read)
_set_l2e () { _l2e_addr "$1" "$2"; poke64 "$REPLY" "$3"; }

# ---- damage classes ----
d_leak () { _hdr; _mid_entry; _set_l2e "$M" "$J" 0; }
d_l2_reserved () {
  _hdr; _mid_entry; _l2e "$M" "$J"
  _set_l2e "$M" "$J" $(( REPLY | (1 << 57) ))
}
d_copied_clear () {
  _hdr; _mid_entry; _l2e "$M" "$J"
  _set_l2e "$M" "$J" $(( REPLY & ~COPIED ))
}
d_past_eof () {
  local e; _hdr; _mid_entry; _l2e "$M" "$J"; e=$REPLY; _past_end
  _set_l2e "$M" "$J" $(( REPLY | (e & COPIED) ))
}
d_refcount_low () {
  _hdr; _mid_entry; _data_off "$M" "$J"
  _set_rc "$REPLY" 0
}
d_refcount_high () {
  local d; _hdr; _mid_entry; _data_off "$M" "$J"; d=$REPLY
  _rorder; (( REPLY > 0 )) || return 2     # a 1-bit refcount cannot go higher
  _get_rc "$d"; _set_rc "$d" $(( REPLY + 1 ))
}
d_l2_table_refcount_zero () { _hdr; _mid_l1; _l2_off "$REPLY"; _set_rc "$REPLY" 0; }
d_reftable_entry_zeroed () {
  local used o c
  _hdr; _hf 48 8; o=$REPLY; _cs; c=$REPLY; _hf 56 4
  mapfile -t used < <(allocated "$o" $(( REPLY * c / 8 )) 8)
  _rte_addr $(( used[${#used[@]} / 2] - 1 ))
  poke64 "$REPLY" 0
}
d_l1_entry_past_eof () {
  local a; _hdr; _mid_l1; _l1e_addr "$REPLY"; a=$REPLY; _past_end
  poke64 "$a" $(( REPLY | COPIED ))
}
# iotest 060 ("unallocated image header"): the header cluster's refcount 0
d_header_refcount_zero () { _hdr; _set_rc 0 0; }
# an L2 table's refcount one too high: a leak, and its L1 entry's COPIED
# flag no longer matches
d_l2_table_refcount_high () {
  local l2; _hdr; _mid_l1; _l2_off "$REPLY"; l2=$REPLY
  _rorder; (( REPLY > 0 )) || return 2     # a 1-bit refcount cannot go higher
  _get_rc "$l2"; _set_rc "$l2" $(( REPLY + 1 ))
}

# Compressed clusters, in every configuration: comp_pair writes two
# compressed clusters in one qemu-io run into two free guest clusters of
# the middle L2 table (QEMU packs them into one host cluster where the
# refcount width lets it) and sets CM, CJ: the L1 index and the L2 index
# of the first (the second is CJ + 1). The header is read again after
# the write (it may have moved the refcount table).
comp_pair () {
  local m e j c o w; _hdr; _cs; c=$REPLY; _mid_l1; m=$REPLY
  _l2e_size; w=$REPLY; e=$(( c / w )); _l2_off "$m"; o=$REPLY
  j=$(od -An -v -tx1 -w"$w" -j "$o" -N "$(( e * w ))" "$IMG" |
      awk -v ORS= '{ gsub(/ /, ""); if ($0 ~ /^0+$/) { if (p) { print NR - 2; exit } p = 1 } else p = 0 }')
  [ -n "$j" ] || return 1
  qemu-io -f qcow2 -c "write -c -P 0x31 $(( (m * e + j) * c )) $c" \
    -c "write -c -P 0x32 $(( (m * e + j + 1) * c )) $c" "$IMG" > /dev/null || return 1
  CM=$m CJ=$j
  _hdr
}
# the host offset bits of a compressed L2 entry (the rest: the flag and
# the additional sector count)
_comp_mask () { _cluster_bits; REPLY=$(( (1 << (62 - (REPLY - 8))) - 1 )); }
_comp_host () { local k; _comp_mask; k=$REPLY; _l2e "$CM" "$1"; REPLY=$(( REPLY & k )); }
_set_comp_host () {
  local k; _comp_mask; k=$REPLY; _l2e "$CM" "$1"
  _set_l2e "$CM" "$1" $(( (REPLY & ~k) | $2 ))
}
same_host_cluster () {
  local a c; _cs; c=$REPLY; _comp_host "$CJ"; a=$REPLY; _comp_host $(( CJ + 1 ))
  (( (a & ~(c - 1)) == (REPLY & ~(c - 1)) ))
}
# two compressed clusters sharing a host cluster: legal, no damage at all
# (1-bit refcounts cannot count two references: QEMU does not share there)
d_comp_shared () { comp_pair || return 1; same_host_cluster || return 2; }
# the shared host cluster's refcount 1 for its two compressed clusters
d_comp_shared_refcount_low () {
  comp_pair || return 1; same_host_cluster || return 2
  _comp_host "$CJ"; _set_rc "$REPLY" 1
}
# compressed data past the end of the file (the sector count kept)
d_comp_past_eof () {
  comp_pair || return 1; _past_end; _set_comp_host $(( CJ + 1 )) "$REPLY"
}
# a compressed cluster's data inside a normal data cluster (iotest 060's
# overlaps, with compressed data)
d_comp_overlap_data () {
  comp_pair || return 1; _mid_entry; _data_off "$M" "$J"
  _set_comp_host $(( CJ + 1 )) $(( REPLY + 512 ))
}
damages="leak l2_reserved copied_clear past_eof refcount_low refcount_high
         l2_table_refcount_zero reftable_entry_zeroed l1_entry_past_eof
         header_refcount_zero l2_table_refcount_high comp_shared
         comp_shared_refcount_low comp_past_eof comp_overlap_data"
# (development: MATRIX_DAMAGES="a b" runs only those; CI unsets it)
damages=${MATRIX_DAMAGES:-$damages}

FIELDS="corruptions leaks check-errors image-end-offset total-clusters
        allocated-clusters fragmented-clusters compressed-clusters"
FIELDS1=$(echo $FIELDS)
fields () {  # fields FILE: "f=v ..." of a check report, or nothing
  jq -r --arg f "$FIELDS1" 'select(type == "object" and has("check-errors")) |
     . as $o | [($f | split(" "))[] | "\(.)=\($o[.] // 0)"] | join(" ")' \
     "$1" 2>/dev/null
}
counts () {
  jq -r 'select(type == "object" and has("check-errors")) |
         "\(.corruptions // 0) \(.leaks // 0)"' "$1" 2>/dev/null
}

# Each configuration's image is made once (in $T/cfg-CONFIG, on the first
# of its combinations in this shard) and copied for each damage: qemu-img
# and qemu-io make the same image every time.
idx=0 nc=0 nc_list= skipped=
for c in $configs; do
  b=
  for d in $damages; do
    idx=$((idx + 1))
    [ $(( (idx - 1) % shard_n + 1 )) -eq "$shard_k" ] || continue
    name=$c/$d
    w=$T/$c-$d
    if [ -z "$b" ]; then
      b=$T/cfg-$c
      mkdir -p "$b"
      (cd "$b" && IMG=$b/orig.qcow2 && "cfg_$c") > "$b/build.log" 2>&1
      brc=$?
    fi
    mkdir -p "$w"
    IMG=$w/orig.qcow2
    if [ -s "$b/build.log" ]; then cp "$b/build.log" "$w/build.log"
    else : > "$w/build.log"; fi
    [ $brc -eq 0 ] && cp "$b/orig.qcow2" "$IMG" ||
      { fail "$name: the image builds" "$(tail -n 3 "$w/build.log" | tr '\n' '|')"; continue; }
    (cd "$w" && "d_$d") >> "$w/build.log" 2>&1
    drc=$?
    if [ $drc -eq 2 ]; then
      skipped="$skipped $name"
      continue
    elif [ $drc -ne 0 ]; then
      fail "$name: the damage applies" "$(tail -n 3 "$w/build.log" | tr '\n' '|')"
      continue
    fi

    # the check, against qemu-img check
    qcowkit check --output=json "$IMG" > "$w/k.json" 2> "$w/k.err"; krc=$?
    qemu-img check --output=json "$IMG" > "$w/q.json" 2> "$w/q.err"; qrc=$?
    qf=$(fields "$w/q.json")
    if [ -z "$qf" ]; then
      nc=$((nc + 1)) nc_list="$nc_list $name"
      diag "$name: not comparable: qemu-img check exit $qrc: $(head -n 1 "$w/q.err" | cut -c 1-150)"
    else
      is "$krc $(fields "$w/k.json")" "$qrc $qf" \
        "$name: check: exit status and every count as qemu-img check"
    fi

    # the repair, against qemu-img's
    for t in k q; do cp "$IMG" "$w/$t.qcow2"; done
    qcowkit check -r all --output=json "$w/k.qcow2" > /dev/null 2> "$w/kr.err"
    qemu-img check -r all "$w/q.qcow2" > /dev/null 2>&1
    qemu-img check --output=json "$w/k.qcow2" > "$w/qk.json" 2> /dev/null
    qemu-img check --output=json "$w/q.qcow2" > "$w/qq.json" 2> /dev/null
    ck=$(counts "$w/qk.json") cq=$(counts "$w/qq.json")
    if [ -z "$cq" ]; then
      diag "$name: repair not comparable: qemu-img cannot check its own repair"
    elif [ -z "$ck" ]; then
      fail "$name: qemu-img can check our repair"
    else
      read -r kc kl <<< "$ck"; read -r qc ql <<< "$cq"
      if [ "$kc" -le "$qc" ] && [ "$kl" -le "$ql" ]; then
        pass "$name: repair: qemu-img check finds $kc corruptions, $kl leaks after ours ($qc, $ql after its own)"
      else
        fail "$name: repair at least as well as qemu-img check -r all" \
          "after ours: $kc $kl; after qemu-img's: $qc $ql"
      fi
    fi
    qemu-img compare -q "$IMG" "$w/k.qcow2" > "$w/cmp.out" 2>&1
    crc=$?
    if [ $crc -eq 0 ]; then
      pass "$name: repair: the guest data is unchanged (qemu-img compare)"
    elif [ $crc -eq 1 ] && grep -q "is lost" "$w/kr.err"; then
      pass "$name: repair: the guest data changed only where the repair said it was lost"
    elif [ $crc -eq 1 ]; then
      fail "$name: repair: the guest data changed without a lost range reported"
    else
      diag "$name: guest data not comparable: $(head -n 1 "$w/cmp.out" | cut -c 1-150)"
    fi
    s1=$(sha256sum < "$w/k.qcow2")
    qcowkit check -r all "$w/k.qcow2" > /dev/null 2>&1
    is "$(sha256sum < "$w/k.qcow2")" "$s1" "$name: repair: a second run changes nothing"
    rm -f "$w"/*.qcow2
  done
done
diag "not comparable (qemu-img check gave no report):${nc_list:- none}"
diag "combinations that do not apply:${skipped:- none}"
done_testing
