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

# peekN OFFSET [FILE]: the big-endian integer there, as 0x hex.
peekn () {
  printf '0x%s' "$(od -An -tx1 -v -j "$(( $2 ))" -N "$1" "${3:-$IMG}" |
                   tr -d ' \n')"
}
peek64 () { peekn 8 "$@"; }
peek32 () { peekn 4 "$@"; }
peek16 () { peekn 2 "$@"; }
peek8 () { peekn 1 "$@"; }

# pokeN OFFSET VALUE [FILE]; pokehex OFFSET HEXBYTES [FILE].
poke64 () { qkpoke "${3:-$IMG}" "$(hex "$1")" be64 "$(hex "$2")"; }
poke32 () { qkpoke "${3:-$IMG}" "$(hex "$1")" be32 "$(hex "$2")"; }
poke16 () { qkpoke "${3:-$IMG}" "$(hex "$1")" be16 "$(hex "$2")"; }
pokehex () { qkpoke "${3:-$IMG}" "$(hex "$1")" "$2"; }
# pokestr OFFSET STRING [FILE]
pokestr () {
  pokehex "$1" "$(printf '%s' "$2" | od -An -tx1 -v | tr -d ' \n')" "$3"
}

file_len () { stat -c %s "${1:-$IMG}"; }
truncate_to () { qkpoke "$IMG" truncate "$(( $1 ))"; }

# Header fields.
cluster_bits () { echo $(( $(peek32 20) )); }
cs () { echo $(( 1 << $(cluster_bits) )); }
l1_off () { peek64 40; }
rt_off () { peek64 48; }
sn_off () { peek64 64; }
nb_snapshots () { echo $(( $(peek32 60) )); }
incompat () { peek64 72; }
set_incompat_bit () { poke64 72 $(( $(peek64 72) | (1 << $1) )); }
set_compat_bit () { poke64 80 $(( $(peek64 80) | (1 << $1) )); }
set_autoclear_bit () { poke64 88 $(( $(peek64 88) | (1 << $1) )); }
clear_autoclear_bit () { poke64 88 $(( $(peek64 88) & ~(1 << $1) )); }

L1E_OFFSET_MASK=0x00fffffffffffe00
L2E_OFFSET_MASK=0x00fffffffffffe00
COPIED=0x8000000000000000
COMPRESSED=0x4000000000000000

# The size of an L2 entry: 16 with extended L2 (incompatible bit 4).
l2e_size () { if (( $(incompat) & 16 )); then echo 16; else echo 8; fi; }

# Active L1 entry I.
l1e_addr () { hex $(( $(l1_off) + 8 * $1 )); }
l1e () { peek64 "$(l1e_addr "$1")"; }
set_l1e () { poke64 "$(l1e_addr "$1")" "$2"; }
l2_off () { hex $(( $(l1e "$1") & L1E_OFFSET_MASK )); }

# Active L2 entry J of the table L1 entry I points to (and its bitmap).
l2e_addr () { hex $(( $(l2_off "$1") + $(l2e_size) * $2 )); }
l2e () { peek64 "$(l2e_addr "$1" "$2")"; }
set_l2e () { poke64 "$(l2e_addr "$1" "$2")" "$3"; }
l2bm () { peek64 $(( $(l2e_addr "$1" "$2") + 8 )); }
set_l2bm () { poke64 $(( $(l2e_addr "$1" "$2") + 8 )) "$3"; }
# The host offset of the data cluster of L2 entry J of L1 entry I.
data_off () { hex $(( $(l2e "$1" "$2") & L2E_OFFSET_MASK )); }

# Refcount table entry I and refcounts (16-bit refcounts only).
rte_addr () { hex $(( $(rt_off) + 8 * $1 )); }
rte () { peek64 "$(rte_addr "$1")"; }
set_rte () { poke64 "$(rte_addr "$1")" "$2"; }
refcount_addr () {  # refcount_addr HOST_OFFSET
  local c=$(( $1 >> $(cluster_bits) )) per=$(( $(cs) / 2 ))
  hex $(( ($(rte $(( c / per ))) & ~0x1ff) + 2 * (c % per) ))
}
refcount () { peek16 "$(refcount_addr "$1")"; }
set_refcount () { poke16 "$(refcount_addr "$1")" "$2"; }

# add_cluster: append a zeroed cluster to the file with refcount 1 and
# print its offset (16-bit refcounts; the refcount block must cover it).
add_cluster () {
  local c; c=$(cs)
  local off=$(( ($(file_len) + c - 1) / c * c ))
  truncate_to $(( off + c ))
  set_refcount "$off" 1
  hex "$off"
}

# Snapshot table entry I: its offset (entries are 8-byte aligned).
sn_entry () {
  local off; off=$(sn_off)
  local i=0
  while (( i < $1 )); do
    local e=$(( 40 + $(peek32 $(( off + 36 ))) + $(peek16 $(( off + 12 )))
                + $(peek16 $(( off + 14 ))) ))
    off=$(( off + (e + 7) / 8 * 8 ))
    i=$(( i + 1 ))
  done
  hex "$off"
}
sn_l1_off () { peek64 "$(sn_entry "$1")"; }
sn_l1_size () { peek32 $(( $(sn_entry "$1") + 8 )); }

# snap_hex L1OFF L1SIZE ID NAME EXTRA_SIZE [DISK_SIZE]: one snapshot table
# entry as hex, padded to 8 bytes. Extra data: vm_state_size_large 0,
# disk_size (default $SIZE in bytes), icount 0, then zeros.
be () { printf "%0$(( $1 * 2 ))x" "$(( $2 ))"; }
strhex () { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
snap_hex () {
  local l1off=$1 l1size=$2 id=$3 name=$4 extra=$5
  local disk=${6:-$(( $(qemu-img info --output=json "$IMG" |
                          jq '.["virtual-size"]') ))}
  local h ex="" n
  h=$(be 8 "$l1off")$(be 4 "$l1size")$(be 2 ${#id})$(be 2 ${#name})
  h=$h$(be 4 0)$(be 4 0)$(be 8 0)$(be 4 0)$(be 4 "$extra")
  if (( extra >= 8 )); then ex=$(be 8 0); fi
  if (( extra >= 16 )); then ex=$ex$(be 8 "$disk"); fi
  if (( extra >= 24 )); then ex=$ex$(be 8 0); fi
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
# with that magic (of its 8-byte header), or nothing.
ext_off () {
  local off=$(( $(peek32 100) )) c; c=$(cs)
  local end=$c bfo; bfo=$(( $(peek64 8) ))
  (( bfo && bfo < c )) && end=$bfo
  while (( off + 8 <= end )); do
    local m; m=$(( $(peek32 "$off") ))
    local l; l=$(( $(peek32 $(( off + 4 ))) ))
    (( m == 0 )) && return
    if (( m == $1 )); then hex "$off"; return; fi
    off=$(( off + 8 + (l + 7) / 8 * 8 ))
  done
}
EXT_BACKING_FORMAT=0xe2792aca
EXT_FEATURE_TABLE=0x6803f857
EXT_BITMAPS=0x23852875
EXT_DATA_FILE=0x44415441

# Bitmaps: the directory offset, and entry fields of the first bitmap.
bm_dir_off () { peek64 $(( $(ext_off $EXT_BITMAPS) + 8 + 16 )); }
bm_table_off () { peek64 "$(bm_dir_off)"; }

# Snapshot I's L2 entry J of the table its L1 entry K points to.
sn_l2e_addr () {
  local l2=$(( $(peek64 $(( $(sn_l1_off "$1") + 8 * $2 ))) & L1E_OFFSET_MASK ))
  hex $(( l2 + $(l2e_size) * $3 ))
}
# The table of the second bitmap (directory entries are 8-byte aligned).
bm2_entry () {
  local e; e=$(bm_dir_off)
  hex $(( e + (24 + $(peek16 $(( e + 18 ))) + $(peek32 $(( e + 20 ))) + 7) / 8 * 8 ))
}
bm2_table_off () { peek64 "$(bm2_entry)"; }
