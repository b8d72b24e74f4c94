# Helpers for the check case scripts (tests/check/*/script).
#
# tests/check-cases.sh sources this file, changes into a fresh directory and
# sources a case's script with $IMG set to the image it must create. Images
# are made with qemu-img and qemu-io and damaged with qkpoke; every number
# read back (peek*) is a 0x hex string, so bash arithmetic takes it as is
# (values with bit 63 set wrap to negative numbers, which printf %x and the
# bit operators handle correctly).

SIZE=${SIZE:-64M}

# mkimg [qemu-img create options...]: create $IMG ($SIZE, default 64M).
mkimg () { qemu-img create -q -f qcow2 "$@" "$IMG" "$SIZE"; }

# qio COMMAND...: run qemu-io commands on $IMG.
qio () {
  local a=()
  for c in "$@"; do a+=(-c "$c"); done
  qemu-io -f qcow2 "${a[@]}" "$IMG" >/dev/null
}
# wr OFFSET LENGTH [PATTERN]: write guest data; wrc: compressed.
wr () { qio "write -P ${3:-1} $1 $2"; }
wrc () { qio "write -c -P ${3:-1} $1 $2"; }

hex () { printf '0x%x' "$(( $1 ))"; }

# Reading bytes costs a process (od) per read, and this VM makes process
# creation dear: the helpers below read each thing once per call. The
# internal ones (_name) leave their result in REPLY instead of printing
# it, so that they nest without a subshell each; the public ones print
# as before. Nothing is cached across calls: the images change between
# them (pokes, qemu-img, qemu-io).

# _od OFFSET LENGTH [FILE]: REPLY = the bytes there, as one hex string
# (shorter at the end of the file, empty past it or on error, as before).
_od () {
  REPLY=$(od -An -tx1 -v -j "$(( $1 ))" -N "$(( $2 ))" "${3:-$IMG}") || :
  REPLY=${REPLY//[$' \n']/}
}
# _peek N OFFSET [FILE]: REPLY = the big-endian integer there, as 0x hex.
_peek () { _od "$2" "$1" "$3"; REPLY=0x$REPLY; }
# _hdr [FILE]: read the header fields (the first 112 bytes) into _H, in
# one process; _hf OFFSET N: REPLY = the N-byte field at OFFSET of _H, as
# 0x hex (the bytes peekN would read there).
_hdr () { _od 0 112 "${1:-$IMG}"; _H=$REPLY; }
_hf () { REPLY=0x${_H:$(( 2 * $1 )):$(( 2 * $2 ))}; }

# peekN OFFSET [FILE]: the big-endian integer there, as 0x hex.
peekn () { _peek "$1" "$2" "$3"; printf '%s' "$REPLY"; }
peek64 () { peekn 8 "$@"; }
peek32 () { peekn 4 "$@"; }
peek16 () { peekn 2 "$@"; }
peek8 () { peekn 1 "$@"; }

# pokeN OFFSET VALUE [FILE]; pokehex OFFSET HEXBYTES [FILE].
poke_ () {  # poke_ WIDTH OFFSET VALUE [FILE]
  local a v
  printf -v a '0x%x' "$(( $2 ))"; printf -v v '0x%x' "$(( $3 ))"
  qkpoke "${4:-$IMG}" "$a" "$1" "$v"
}
poke64 () { poke_ be64 "$@"; }
poke32 () { poke_ be32 "$@"; }
poke16 () { poke_ be16 "$@"; }
pokehex () { local a; printf -v a '0x%x' "$(( $1 ))"; qkpoke "${3:-$IMG}" "$a" "$2"; }
# pokestr OFFSET STRING [FILE]
pokestr () {
  pokehex "$1" "$(printf '%s' "$2" | od -An -tx1 -v | tr -d ' \n')" "$3"
}

file_len () { stat -c %s "${1:-$IMG}"; }
truncate_to () { qkpoke "$IMG" truncate "$(( $1 ))"; }

# Header fields.
_cluster_bits () { _hf 20 4; REPLY=$(( REPLY )); }
_cs () { _hf 20 4; REPLY=$(( 1 << REPLY )); }
cluster_bits () { _hdr; _cluster_bits; echo "$REPLY"; }
cs () { _hdr; _cs; echo "$REPLY"; }
l1_off () { peek64 40; }
rt_off () { peek64 48; }
sn_off () { peek64 64; }
nb_snapshots () { echo $(( $(peek32 60) )); }
incompat () { peek64 72; }
set_incompat_bit () { _peek 8 72; poke64 72 $(( REPLY | (1 << $1) )); }
set_compat_bit () { _peek 8 80; poke64 80 $(( REPLY | (1 << $1) )); }
set_autoclear_bit () { _peek 8 88; poke64 88 $(( REPLY | (1 << $1) )); }
clear_autoclear_bit () { _peek 8 88; poke64 88 $(( REPLY & ~(1 << $1) )); }

L1E_OFFSET_MASK=0x00fffffffffffe00
L2E_OFFSET_MASK=0x00fffffffffffe00
COPIED=0x8000000000000000
COMPRESSED=0x4000000000000000

# The size of an L2 entry: 16 with extended L2 (incompatible bit 4).
_l2e_size () { _hf 72 8; if (( REPLY & 16 )); then REPLY=16; else REPLY=8; fi; }
l2e_size () { _hdr; _l2e_size; echo "$REPLY"; }

# (the _ versions need _hdr first)
# Active L1 entry I.
_l1e_addr () { _hf 40 8; REPLY=$(( REPLY + 8 * $1 )); }
_l1e () { _l1e_addr "$1"; _peek 8 "$REPLY"; }
_l2_off () { _l1e "$1"; REPLY=$(( REPLY & L1E_OFFSET_MASK )); }
l1e_addr () { _hdr; _l1e_addr "$1"; hex "$REPLY"; }
l1e () { _hdr; _l1e "$1"; printf '%s' "$REPLY"; }
set_l1e () { _hdr; _l1e_addr "$1"; poke64 "$REPLY" "$2"; }
l2_off () { _hdr; _l2_off "$1"; hex "$REPLY"; }

# Active L2 entry J of the table L1 entry I points to (and its bitmap).
_l2e_addr () {
  local o; _l2_off "$1"; o=$REPLY
  _l2e_size; REPLY=$(( o + REPLY * $2 ))
}
_l2e () { _l2e_addr "$1" "$2"; _peek 8 "$REPLY"; }
l2e_addr () { _hdr; _l2e_addr "$1" "$2"; hex "$REPLY"; }
l2e () { _hdr; _l2e "$1" "$2"; printf '%s' "$REPLY"; }
set_l2e () { _hdr; _l2e_addr "$1" "$2"; poke64 "$REPLY" "$3"; }
l2bm () { _hdr; _l2e_addr "$1" "$2"; peek64 $(( REPLY + 8 )); }
set_l2bm () { _hdr; _l2e_addr "$1" "$2"; poke64 $(( REPLY + 8 )) "$3"; }
# The host offset of the data cluster of L2 entry J of L1 entry I.
_data_off () { _l2e "$1" "$2"; REPLY=$(( REPLY & L2E_OFFSET_MASK )); }
data_off () { _hdr; _data_off "$1" "$2"; hex "$REPLY"; }

# Refcount table entry I and refcounts (16-bit refcounts only).
_rte_addr () { _hf 48 8; REPLY=$(( REPLY + 8 * $1 )); }
_rte () { _rte_addr "$1"; _peek 8 "$REPLY"; }
rte_addr () { _hdr; _rte_addr "$1"; hex "$REPLY"; }
rte () { _hdr; _rte "$1"; printf '%s' "$REPLY"; }
set_rte () { _hdr; _rte_addr "$1"; poke64 "$REPLY" "$2"; }
_refcount_addr () {  # _refcount_addr HOST_OFFSET
  local c per
  _cluster_bits; c=$(( $1 >> REPLY ))
  _cs; per=$(( REPLY / 2 ))
  _rte $(( c / per ))
  REPLY=$(( (REPLY & ~0x1ff) + 2 * (c % per) ))
}
refcount_addr () { _hdr; _refcount_addr "$1"; hex "$REPLY"; }
refcount () { _hdr; _refcount_addr "$1"; peek16 "$REPLY"; }
set_refcount () { _hdr; _refcount_addr "$1"; poke16 "$REPLY" "$2"; }

# add_cluster: append a zeroed cluster to the file with refcount 1 and
# print its offset (16-bit refcounts; the refcount block must cover it).
add_cluster () {
  local c; _hdr; _cs; c=$REPLY
  local off=$(( ($(file_len) + c - 1) / c * c ))
  truncate_to $(( off + c ))
  set_refcount "$off" 1
  hex "$off"
}

# Snapshot table entry I: its offset (entries are 8-byte aligned); one
# read of each entry's sizes (id_str_size at 12, name_size at 14,
# extra_data_size at 36).
_sn_entry () {
  local off i=0 e
  _hf 64 8; off=$(( REPLY ))
  while (( i < $1 )); do
    _od $(( off + 12 )) 28
    e=$(( 40 + 0x${REPLY:48:8} + 0x${REPLY:0:4} + 0x${REPLY:4:4} ))
    off=$(( off + (e + 7) / 8 * 8 ))
    i=$(( i + 1 ))
  done
  REPLY=$off
}
sn_entry () { _hdr; _sn_entry "$1"; hex "$REPLY"; }
sn_l1_off () { _hdr; _sn_entry "$1"; peek64 "$REPLY"; }
sn_l1_size () { _hdr; _sn_entry "$1"; peek32 $(( REPLY + 8 )); }

# snap_hex L1OFF L1SIZE ID NAME EXTRA_SIZE [DISK_SIZE]: one snapshot table
# entry as hex, padded to 8 bytes. Extra data: vm_state_size_large 0,
# disk_size (default $SIZE in bytes), icount 0, then zeros.
be () { printf "%0$(( $1 * 2 ))x" "$(( $2 ))"; }
strhex () { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
snap_hex () {
  local l1off=$1 l1size=$2 id=$3 name=$4 extra=$5
  local disk=${6:-$(( $(qemu-img info --output=json "$IMG" |
                          jq '.["virtual-size"]') ))}
  local h ex="" n b
  # (be, field by field, in one printf)
  printf -v h '%016x%08x%04x%04x%08x%08x%016x%08x%08x' "$(( l1off ))" \
    "$(( l1size ))" ${#id} ${#name} 0 0 0 0 "$(( extra ))"
  if (( extra >= 8 )); then ex=0000000000000000; fi
  if (( extra >= 16 )); then printf -v b '%016x' "$(( disk ))"; ex=$ex$b; fi
  if (( extra >= 24 )); then ex=${ex}0000000000000000; fi
  while (( ${#ex} < extra * 2 )); do ex=${ex}00; done
  ex=${ex:0:$(( extra * 2 ))}
  h=$h$ex$(strhex "$id")$(strhex "$name")
  n=$(( ${#h} / 2 ))
  while (( n % 8 )); do h=${h}00; n=$(( n + 1 )); done
  printf '%s' "$h"
}
# put_snaptable COUNT HEX: write a snapshot table at the current snapshot
# table offset (it must fit in the clusters already there) and set
# nb_snapshots.
put_snaptable () {
  pokehex "$(sn_off)" "$2"
  poke32 60 "$1"
}

# Header extensions: ext_off MAGIC prints the offset of the first extension
# with that magic (of its 8-byte header), or nothing; _ext_off (after
# _hdr): REPLY = that offset, or empty. One read per extension header.
_ext_off () {
  local off c end bfo m l
  _hf 100 4; off=$(( REPLY ))
  _cs; c=$REPLY; end=$c
  _hf 8 8; bfo=$(( REPLY ))
  (( bfo && bfo < c )) && end=$bfo
  while (( off + 8 <= end )); do
    _od "$off" 8
    m=$(( 0x${REPLY:0:8} ))
    l=$(( 0x${REPLY:8:8} ))
    if (( m == 0 )); then REPLY=; return 0; fi
    if (( m == $1 )); then REPLY=$off; return 0; fi
    off=$(( off + 8 + (l + 7) / 8 * 8 ))
  done
  REPLY=
}
ext_off () { _hdr; _ext_off "$1"; [ -z "$REPLY" ] || hex "$REPLY"; }
EXT_BACKING_FORMAT=0xe2792aca
EXT_FEATURE_TABLE=0x6803f857
EXT_BITMAPS=0x23852875
EXT_DATA_FILE=0x44415441

# Bitmaps: the directory offset, and entry fields of the first bitmap.
_bm_dir_off () { _ext_off $EXT_BITMAPS; _peek 8 $(( REPLY + 8 + 16 )); }
bm_dir_off () { _hdr; _bm_dir_off; printf '%s' "$REPLY"; }
bm_table_off () { _hdr; _bm_dir_off; peek64 "$REPLY"; }

# Snapshot I's L2 entry J of the table its L1 entry K points to.
sn_l2e_addr () {
  local l2
  _hdr; _sn_entry "$1"; _peek 8 "$REPLY"       # its L1 table
  _peek 8 $(( REPLY + 8 * $2 ))
  l2=$(( REPLY & L1E_OFFSET_MASK ))
  _l2e_size
  hex $(( l2 + REPLY * $3 ))
}
# The table of the second bitmap (directory entries are 8-byte aligned):
# the first entry's name_size (at 18) and extra_data_size (at 20) in one
# read.
_bm2_entry () {
  local e; _bm_dir_off; e=$(( REPLY ))
  _od $(( e + 18 )) 6
  REPLY=$(( e + (24 + 0x${REPLY:0:4} + 0x${REPLY:4:8} + 7) / 8 * 8 ))
}
bm2_entry () { _hdr; _bm2_entry; hex "$REPLY"; }
bm2_table_off () { _hdr; _bm2_entry; peek64 "$REPLY"; }
