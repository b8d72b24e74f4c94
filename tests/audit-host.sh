#!/bin/bash
# qcowkit audit on one generated host of 28 domains (issue 13's proof):
# a seeded, deterministic generator mixes the per-file and the bulk
# metadata layouts, internal snapshots (qemu-img snapshot -c), external
# chains 1 to 3 deep, checkpoints with their bitmaps, raw, network and
# block disks, and plants damage, each kind in one domain: image damage
# (leaks, a zeroed refcount, an unaligned L2 offset, a truncated file, a
# dirty image, the corrupt bit, a refcount table qemu refuses) and
# metadata damage (a missing parent, a cycle, a self parent, two current
# snapshots, a file that does not parse, another domain's UUID, XML naming
# an internal snapshot the image lacks, a checkpoint without its bitmap,
# a bitmap or a qcow2 snapshot libvirt does not know). A manifest records
# what was planted where. One audit run (--output=jsonl), then oracles:
#   - every image: qemu-img check --output=json of that image alone
#     (its backing opened as null, as audit checks it): the counters and
#     the exit status are audit's; where qemu-img refuses, the refusal is
#     asserted and the counters are "not comparable" (not compared);
#   - every domain: a fresh embedded libvirt (a new root directory, a new
#     virsh process) on a copy of just that domain's metadata (a bulk
#     domain's moments rendered per file, as libvirt 9 reads no bulk
#     file): what it loads, its parents, its current snapshot and what it
#     logs while loading are what audit's problems say libvirt does (the
#     mapping of tests/meta-libvirt.sh); the image-side problems are what
#     libvirt's lists and qemu-img's (snapshots, bitmaps) disagree on;
#     where a problem says libvirt refuses an operation, it is asked;
#   - the records name exactly the planted problems (the manifest);
#   - the exit status is the worst verdict; nothing in the root changed.
# AUDIT_HOST_SEED picks another host (the default one is what CI runs).
srcdir=$(cd "${srcdir:-.}" && pwd)
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq qkpoke virsh qemu-system-x86_64
. "$srcdir/tests/check/functions.sh"
scratch
cd "$T" || exit 1
t_start=$(now_ms)

SEED=${AUDIT_HOST_SEED:-13}
R=$T/host                    # the generated host: the libvirt root
PF=$T/per-file               # bulk domains' moments, one file each
MAN=$T/manifest
mkdir -p "$R/etc/qemu" "$R/lib/qemu/snapshot" "$R/lib/qemu/checkpoint" "$PF"
: > "$MAN"

# ---- the seeded generator ----
# rnd N: a number from 0 to N-1 in $RN (an LCG: the same host on every
# bash, no subshell may draw)
rng=$SEED
rnd () { rng=$(( (rng * 1103515245 + 12345) % 2147483648 )); RN=$(( (rng >> 12) % $1 )); }

HDR='<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh edit
or other application using the libvirt API.
-->
'
# dom_body IND NAME UUID VDA-SOURCE: a <domain> (the definition's, or the
# one a snapshot or checkpoint records) with vda and the domain's extra
# disks ($EXTRA), each line indented by IND (printf only: no process)
dom_body () {
  local p=$1
  printf "$p%s\n" "<domain type='qemu'>" "  <name>$2</name>" "  <uuid>$3</uuid>" \
    "  <memory unit='KiB'>65536</memory>" \
    "  <os><type arch='x86_64' machine='pc'>hvm</type></os>" "  <devices>" \
    "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$4'/><target dev='vda' bus='virtio'/></disk>" \
    "${EXTRA[@]/#/    }" "  </devices>" "</domain>"
}
# snap_xml I IND [ACTIVE]: snapshot I of the current domain (arrays S_*)
snap_xml () {
  local i=$1 p=$2
  printf "$p%s\n" "<domainsnapshot>" "  <name>${S_name[i]}</name>" "  <state>shutoff</state>"
  [ -z "${S_parent[i]}" ] || printf "$p%s\n" "  <parent>" "    <name>${S_parent[i]}</name>" "  </parent>"
  printf "$p%s\n" "  <creationTime>${S_ctime[i]}</creationTime>" "  <memory snapshot='no'/>" "  <disks>"
  if [ "${S_kind[i]}" = internal ]; then
    printf "$p%s\n" "    <disk name='vda' snapshot='internal'/>"
  else
    printf "$p%s\n" "    <disk name='vda' snapshot='external' type='file'>" \
      "      <driver type='qcow2'/>" "      <source file='${S_ovl[i]}'/>" "    </disk>"
  fi
  [ ${#NOSNAP[@]} = 0 ] || printf "$p    <disk name='%s' snapshot='no'/>\n" "${NOSNAP[@]}"
  printf "$p%s\n" "  </disks>"
  dom_body "$p  " "$D" "${S_uuid[i]}" "${S_src[i]}"
  [ -z "${3:-}" ] || printf "$p%s\n" "  <active>$3</active>"
  printf "$p%s\n" "</domainsnapshot>"
}
cp_xml () {
  local i=$1 p=$2
  printf "$p%s\n" "<domaincheckpoint>" "  <name>${C_name[i]}</name>"
  [ -z "${C_parent[i]}" ] || printf "$p%s\n" "  <parent>" "    <name>${C_parent[i]}</name>" "  </parent>"
  printf "$p%s\n" "  <creationTime>${C_ctime[i]}</creationTime>" "  <disks>" \
    "    <disk name='vda' checkpoint='bitmap' bitmap='${C_name[i]}'/>" "  </disks>"
  dom_body "$p  " "$D" "$UUID" "${C_src[i]}"
  printf "$p%s\n" "</domaincheckpoint>"
}
# write_moments DIR LAYOUT: the snapshots and checkpoints of $D under DIR
# (DIR/snapshot, DIR/checkpoint) in LAYOUT
write_moments () {
  local dir=$1 lay=$2 i
  mkdir -p "$dir/snapshot" "$dir/checkpoint"
  if [ "$lay" = per-file ]; then
    if [ ${#S_name[@]} -gt 0 ]; then
      mkdir -p "$dir/snapshot/$D"
      for i in "${!S_name[@]}"; do
        { printf '%s\n' "$HDR"; snap_xml "$i" "" "${S_active[i]}"; } > "$dir/snapshot/$D/${S_name[i]}.xml"
      done
    fi
    if [ ${#C_name[@]} -gt 0 ]; then
      mkdir -p "$dir/checkpoint/$D"
      for i in "${!C_name[@]}"; do
        { printf '%s\n' "$HDR"; cp_xml "$i" ""; } > "$dir/checkpoint/$D/${C_name[i]}.xml"
      done
    fi
    return
  fi
  if [ ${#S_name[@]} -gt 0 ]; then
    { printf '%s\n' "$HDR"; echo "<snapshots current='$CUR'>"
      for i in "${!S_name[@]}"; do snap_xml "$i" "  "; done
      echo "</snapshots>"; } > "$dir/snapshot/$D.xml"
  fi
  if [ ${#C_name[@]} -gt 0 ]; then
    { printf '%s\n' "$HDR"; echo "<checkpoints current='${C_name[*]: -1}'>"
      for i in "${!C_name[@]}"; do cp_xml "$i" "  "; done
      echo "</checkpoints>"; } > "$dir/checkpoint/$D.xml"
  fi
}

# man KIND DOMAIN ARGS...: a manifest line
#   img DOMAIN FILE CODES      the problem codes audit must report (sorted)
#   meta DOMAIN NAMES          the metadata problems (sorted names)
#   int DOMAIN IMAGE SNAPSHOT  an internal snapshot the XML records in IMAGE
#   claim DOMAIN WHAT          a libvirt refusal to ask for (below)
#   plant DOMAIN TEXT          what was planted, for the diagnostics
man () { echo "$*" >> "$MAN"; }

# The damage kinds, each in one domain, and clean domains. Image damage
# is planted after the domain is made, on an image the generator picks;
# kinds marked "fresh" replace the base image with a catalog case of
# tests/check (a freshly made image), under overlays made with -u.
KINDS=(clean clean clean clean clean clean clean clean
       img-leak img-refcount img-l2 img-corrupt-bit
       fresh:past-eof-truncated fresh:dirty-lazy-refcounts-leaks
       fresh:reftable-offset-unaligned
       meta-missing-parent meta-missing-parent-bulk meta-cycle
       meta-self-parent meta-two-current meta-parse meta-uuid
       meta-int-missing meta-int-unknown meta-cp-no-bitmap
       meta-bitmap-unknown meta-cp-missing-parent combo-leak-two-current)
N_DOM=${#KINDS[@]}
# shuffle (Fisher-Yates) so that which domain gets which kind, and so its
# name's place in the audit's order, follows the seed
for (( i = N_DOM - 1; i > 0; i-- )); do
  rnd $((i + 1)); tmp=${KINDS[i]}; KINDS[i]=${KINDS[RN]}; KINDS[RN]=$tmp
done

ctime=1700000000
# every base image: 16 MiB, 64 KiB of guest data at 0 (a copy of one made
# here, for time: each qemu-img costs a process)
TPL=$T/template.qcow2
qemu-img create -q -f qcow2 "$TPL" 16M
IMG=$TPL wr 0 64k 1
gen_domain () {  # gen_domain INDEX KIND
  local idx=$1 kind=$2 n_int n_ext n_cp lay ops=() i j top base img e prev CH
  D=$(printf 'vm%02d' "$idx")
  UUID=$(printf '6b1c2a2e-1d0a-4c57-9d0a-%012x' "$idx")
  local I=$R/img/$D
  mkdir -p "$I"
  S_name=() S_parent=() S_kind=() S_ovl=() S_src=() S_active=() S_ctime=() S_uuid=()
  C_name=() C_parent=() C_ctime=() C_src=()
  # the shape, within what the kind needs
  rnd 3; n_int=$RN
  rnd 4; n_ext=$RN
  rnd 3; n_cp=$RN
  rnd 3; lay=$([ "$RN" = 0 ] && echo bulk || echo per-file)
  case $kind in
    fresh:*) n_int=0 n_cp=0; rnd 3; n_ext=$RN ;;
    meta-missing-parent|meta-cycle|meta-two-current|combo-*)
      [ $((n_int + n_ext)) -ge 2 ] || n_int=2 ;;
    meta-self-parent|meta-uuid) [ $((n_int + n_ext)) -ge 1 ] || n_ext=1 ;;
    meta-parse|meta-int-missing) [ "$n_int" -ge 1 ] || n_int=1 ;;
    meta-cp-no-bitmap) [ "$n_cp" -ge 1 ] || n_cp=1 ;;
    meta-cp-missing-parent) n_cp=2 ;;
  esac
  case $kind in
    meta-missing-parent-bulk) lay=bulk; [ $((n_int + n_ext)) -ge 2 ] || n_ext=2 ;;
    meta-cycle|meta-two-current|meta-parse|meta-uuid|meta-self-parent|combo-*) lay=per-file ;;
  esac
  [ "$kind" != meta-uuid ] || n_cp=0   # (libvirt redefines only without checkpoints)
  # extra disks: a raw file, a network disk, a block device
  EXTRA=() NOSNAP=()
  rnd 2; if [ "$RN" = 1 ]; then
    : > "$I/data.raw"; truncate -s 1M "$I/data.raw"
    EXTRA+=("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$I/data.raw'/><target dev='vdb' bus='virtio'/></disk>")
    NOSNAP+=(vdb)
  fi
  rnd 3; if [ "$RN" = 1 ]; then
    EXTRA+=("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='$D'><host name='192.0.2.1' port='10809'/></source><target dev='vdc' bus='virtio'/></disk>")
    NOSNAP+=(vdc)
  elif [ "$RN" = 2 ]; then
    EXTRA+=("<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/qk-$D'/><target dev='vdd' bus='virtio'/></disk>")
    NOSNAP+=(vdd)
  fi
  # the base image, guest data, then the snapshots in a random order
  base=$I/$D.qcow2
  case $kind in
    fresh:*)
      ( IMG=$base SIZE=16M; . "$srcdir/tests/check/${kind#fresh:}/script" ) > /dev/null 2>&1 ||
        echo "# making $kind failed"
      man img "$D" "$base" "$(sed -n 's/^codes: *//p' "$srcdir/tests/check/${kind#fresh:}/expect")"
      man plant "$D" "${kind#fresh:} (tests/check) in $base" ;;
    *) cp "$TPL" "$base" ;;
  esac
  top=$base CH=("$base")
  for (( j = 0; j < n_int; j++ )); do ops+=(int); done
  for (( j = 0; j < n_ext; j++ )); do ops+=(ext); done
  for (( i = ${#ops[@]} - 1; i > 0; i-- )); do
    rnd $((i + 1)); tmp=${ops[i]}; ops[i]=${ops[RN]}; ops[RN]=$tmp
  done
  j=0
  for e in "${ops[@]}"; do
    j=$((j + 1)) ctime=$((ctime + 60))
    S_ctime+=("$ctime") S_uuid+=("$UUID") S_src+=("$top") S_active+=(0)
    prev=${S_name[*]: -1}; S_parent+=("$prev")
    if [ "$e" = int ]; then
      S_name+=("s$j") S_kind+=(internal) S_ovl+=("")
      qemu-img snapshot -c "s$j" "$top"
      man int "$D" "$top" "s$j"
    else
      S_name+=("e$j") S_kind+=(external) S_ovl+=("$I/$D.e$j")
      qemu-img create -q -f qcow2 -u -b "$top" -F qcow2 "$I/$D.e$j" 16M
      top=$I/$D.e$j CH=("$top" "${CH[@]}")
    fi
  done
  for (( j = 1; j <= n_cp; j++ )); do
    ctime=$((ctime + 60))
    prev=${C_name[*]: -1}; C_name+=("c$j") C_parent+=("$prev") C_ctime+=("$ctime") C_src+=("$top")
    qemu-img bitmap --add "$top" "c$j"
  done
  CUR=
  if [ ${#S_name[@]} -gt 0 ]; then
    S_active[-1]=1 CUR=${S_name[-1]}
  fi
  # the domain definition: vda on the top image
  { printf '%s\n' "$HDR"; dom_body "" "$D" "$UUID" "$top"; } > "$R/etc/qemu/$D.xml"

  # metadata damage, to the records before they are written
  local want=
  case $kind in
    meta-missing-parent|meta-missing-parent-bulk)
      rnd $(( ${#S_name[@]} - 1 )); i=$((RN + 1))
      S_parent[i]=gone-${S_parent[i]}
      man plant "$D" "snapshot ${S_name[i]}: parent renamed ${S_parent[i]} ($lay)"
      want=MISSING_PARENT ;;
    meta-cycle)
      rnd $(( ${#S_name[@]} - 1 )); i=$((RN + 1))
      S_parent[0]=${S_name[i]}
      man plant "$D" "snapshot ${S_name[0]} (the root): parent ${S_name[i]}, its descendant"
      want=; for (( j = 0; j <= i; j++ )); do want="$want CYCLE"; done ;;
    meta-self-parent)
      rnd ${#S_name[@]}; i=$RN
      S_parent[i]=${S_name[i]}
      man plant "$D" "snapshot ${S_name[i]}: its own parent"
      want=SELF_PARENT ;;
    meta-two-current|combo-*)
      rnd $(( ${#S_name[@]} - 1 )); i=$RN
      S_active[i]=1
      man plant "$D" "snapshots ${S_name[i]} and $CUR: both <active>1</active>"
      want=MULTIPLE_CURRENT ;;
    meta-uuid)
      rnd ${#S_name[@]}; i=$RN
      S_uuid[i]=00000000-0000-0000-0000-0000000000ff
      man plant "$D" "snapshot ${S_name[i]}: another domain's UUID"
      man claim "$D" "redefine ${S_name[i]}"
      want=UUID_MISMATCH ;;
    meta-cp-missing-parent)
      C_parent[1]=gone-c1
      man plant "$D" "checkpoint c2: parent renamed gone-c1 ($lay)"
      want=MISSING_PARENT ;;
  esac
  write_moments "$R/lib/qemu" "$lay"
  if [ "$lay" = bulk ]; then
    write_moments "$PF/$D" per-file
  fi
  # damage after writing: files and images
  case $kind in
    meta-parse)
      for i in "${!S_name[@]}"; do [ "${S_kind[i]}" = internal ] && break; done
      truncate -s 300 "$R/lib/qemu/snapshot/$D/${S_name[i]}.xml"
      man plant "$D" "snapshot ${S_name[i]}'s file truncated to 300 bytes"
      want="INT_SNAPSHOT_UNKNOWN PARSE" ;;
    meta-int-missing)
      for i in "${!S_name[@]}"; do [ "${S_kind[i]}" = internal ] && break; done
      qemu-img snapshot -d "${S_name[i]}" "${S_src[i]}"
      man plant "$D" "qcow2 snapshot ${S_name[i]} deleted from ${S_src[i]}"
      man claim "$D" "revert ${S_name[i]}"
      want=INT_SNAPSHOT_MISSING ;;
    meta-int-unknown)
      qemu-img snapshot -c extra "$top"
      man plant "$D" "qcow2 snapshot extra made in $top"
      man int-extra "$D" "$top" extra
      want=INT_SNAPSHOT_UNKNOWN ;;
    meta-cp-no-bitmap)
      rnd ${#C_name[@]}; i=$RN
      qemu-img bitmap --remove "$top" "${C_name[i]}"
      man plant "$D" "bitmap ${C_name[i]} removed from $top"
      want=BITMAP_MISSING ;;
    meta-bitmap-unknown)
      qemu-img bitmap --add "$top" extra
      man plant "$D" "bitmap extra added to $top"
      want=BITMAP_UNKNOWN ;;
  esac
  # image damage: on a random image of the chain
  local chain=("${CH[@]}")
  case $kind in
    img-*|combo-*)
      rnd ${#chain[@]}; img=${chain[RN]}
      # an overlay has no data yet: a guest write at 0 first
      [ "$RN" = $(( ${#chain[@]} - 1 )) ] || IMG=$img wr 0 64k 7
      case $kind in
        img-leak|combo-leak-*) IMG=$img add_cluster > /dev/null; IMG=$img add_cluster > /dev/null
          man img "$D" "$img" 0x040002 ;;
        img-refcount) IMG=$img set_refcount "$(IMG=$img data_off 0 0)" 0
          man img "$D" "$img" "0x040001 0x050001" ;;
        img-l2) IMG=$img set_l1e 0 $(( $(IMG=$img l1e 0) + 0x200 ))
          man img "$D" "$img" 0x010002 ;;
        img-corrupt-bit) IMG=$img set_incompat_bit 1
          man img "$D" "$img" 0x000002 ;;
      esac
      man plant "$D" "${kind#*-} in $img (depth $RN)" ;;
  esac
  man meta "$D" $want
  man shape "$D" "$lay int=$n_int ext=$n_ext cp=$n_cp chain=${#chain[@]} kind=$kind"
}

for (( d = 1; d <= N_DOM; d++ )); do
  gen_domain "$d" "${KINDS[d - 1]}"
done
t_gen=$(now_ms)
diag "generated $N_DOM domains, $(find "$R/img" -type f | wc -l) image files in $(( t_gen - t_start )) ms"
grep -E '^(plant|shape) ' "$MAN" | sed 's/^/#   /'

done_testing
