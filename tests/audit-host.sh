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
# AUDIT_HOST_SEED picks another host (the default one is what CI runs);
# AUDIT_HOST_KEEP=DIR keeps the scratch directory there. Cost: ~25 s of
# CPU in all (about a third each for making the host, qemu-img, libvirt
# at ~0.25 s per domain), run two processes at a time; the last diag
# lines give the wall and CPU time of each phase.
srcdir=$(cd "${srcdir:-.}" && pwd)
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq qkpoke virsh qemu-system-x86_64
. "$srcdir/tests/check/functions.sh"
scratch
cd "$T" || exit 1
t_start=$(now_ms)
# libvirt (the oracle below) probes QEMU once, while the host is made:
# every domain's fresh root starts with a copy of its capability cache
# (else each would probe QEMU again, ~2 s of CPU)
LVC=$T/lv-cache
mkdir -p "$LVC/etc/qemu"
printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' > "$LVC/etc/qemu.conf"
echo "<domain type='qemu'><name>warm</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>" > "$LVC/etc/qemu/warm.xml"
timeout 120 virsh -q -c "qemu:///embed?root=$LVC" "list --all" > /dev/null 2>&1 &
kill_on_exit $!
# cpu_ms: CPU time used so far (the shell and its children, user and
# system) in $CPU, in ms, without a process (times prints to a file)
cpu_ms () {
  local l t=0 re='([0-9]+)m([0-9]+)\.([0-9]+)s'
  times > "$T/times"
  while read -r l; do
    while [[ $l =~ $re ]]; do
      t=$(( t + BASH_REMATCH[1] * 60000 + 10#${BASH_REMATCH[2]} * 1000 + 10#${BASH_REMATCH[3]} ))
      l=${l#*s}
    done
  done < "$T/times"
  CPU=$t
}

SEED=${AUDIT_HOST_SEED:-13}
R=$T/host                    # the generated host: the libvirt root
PF=$T/per-file               # bulk domains' moments, one file each
MAN=$T/manifest
mkdir -p "$R/etc/qemu" "$R/lib/qemu/snapshot" "$R/lib/qemu/checkpoint" "$PF"
: > "$MAN"

# lanes: at most 2 jobs at a time (2 cores); lane_wait: all done (and
# the probe above)
lanes=0
lane () { if [ "$lanes" -ge 2 ]; then wait -n; else lanes=$((lanes + 1)); fi; "$@" & }
lane_wait () { wait; lanes=0; }

# ---- the seeded generator ----
# rnd N: a number from 0 to N-1 in $RN (xorshift64 in bash arithmetic:
# the same host on every bash; no subshell may draw); mix N: a seed for
# stream N (splitmix64), so that each domain has its own stream
rnd () {
  rng=$(( rng ^ (rng << 13) )); rng=$(( rng ^ ((rng >> 7) & 0x1ffffffffffffff) ))
  rng=$(( rng ^ (rng << 17) )); RN=$(( ((rng >> 33) & 0x7fffffff) % $1 ))
}
mix () {
  local z=$(( SEED * 0x9E3779B97F4A7C15 + $1 * 0x6A09E667F3BCC909 + 1 ))
  z=$(( (z ^ ((z >> 30) & 0x3ffffffff)) * 0xBF58476D1CE4E5B9 ))
  z=$(( (z ^ ((z >> 27) & 0x1fffffffff)) * 0x94D049BB133111EB ))
  rng=$(( z ^ ((z >> 31) & 0x1ffffffff) )); [ "$rng" != 0 ] || rng=1
}
mix 0
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
#   refuses DOMAIN FILE ERE    qemu-img check refuses FILE, saying ERE
#   meta DOMAIN NAMES          the metadata problems audit must report
#   snap DOMAIN NAME PARENT ACTIVE, cp DOMAIN NAME PARENT: the moments as
#                              written (PARENT - for none)
#   int DOMAIN IMAGE SNAPSHOT  an internal snapshot the XML records in IMAGE
#   chain DOMAIN IMAGE...      vda's chain, top first
#   claim DOMAIN WHAT          a libvirt refusal to ask for (below)
#   plant DOMAIN TEXT, shape DOMAIN TEXT: for the diagnostics
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

# every base image: 16 MiB, 64 KiB of guest data at 0 (a copy of one made
# here, for time: each qemu-img costs a process)
TPL=$T/template.qcow2
qemu-img create -q -f qcow2 "$TPL" 16M
IMG=$TPL wr 0 64k 0   # zeros: a shifted L2 table reads as unallocated
gen_domain () {  # gen_domain INDEX KIND
  local idx=$1 kind=$2 n_int n_ext n_cp lay ops=() i j top base img e prev CH
  # each domain its own stream and clock: domains are made two at a time
  mix "$idx"; ctime=$(( 1700000000 + idx * 100000 ))
  printf -v D 'vm%02d' "$idx"
  printf -v UUID '6b1c2a2e-1d0a-4c57-9d0a-%012x' "$idx"
  local I=$R/img/$D
  mkdir -p "$I"
  S_name=() S_parent=() S_kind=() S_ovl=() S_src=() S_active=() S_ctime=() S_uuid=()
  C_name=() C_parent=() C_ctime=() C_src=()
  # the shape, within what the kind needs
  rnd 3; n_int=$RN
  rnd 6; n_ext=$(( RN < 4 ? RN / 2 : RN - 2 ))   # 0 0 1 1 2 3
  rnd 3; n_cp=$RN
  rnd 3; lay=per-file; [ "$RN" != 0 ] || lay=bulk
  case $kind in
    fresh:*) n_int=0 n_cp=0; rnd 3; n_ext=$RN ;;
    # (the shifted L2 table reads 512 bytes of the next cluster: the
    # data, not a snapshot's or a bitmap's table, in an image without)
    img-l2) n_int=0 n_cp=0 ;;
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
  # (the first three domains have one each, whatever the seed)
  rnd 3; [ "$idx" != 1 ] || RN=1
  if [ "$RN" = 1 ]; then
    : > "$I/data.raw"; truncate -s 1M "$I/data.raw"
    EXTRA+=("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$I/data.raw'/><target dev='vdb' bus='virtio'/></disk>")
    NOSNAP+=(vdb)
  fi
  rnd 3; case $idx in 2) RN=1 ;; 3) RN=2 ;; esac
  if [ "$RN" = 1 ]; then
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
      # where the catalog says qemu-img refuses it: its message
      e=$(sed -n "s/^qemu-refuses: *Could not open '[^']*': //p" "$srcdir/tests/check/${kind#fresh:}/expect")
      [ -z "$e" ] || man refuses "$D" "$base" "$e"
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
  for i in "${!S_name[@]}"; do
    man snap "$D" "${S_name[i]}" "${S_parent[i]:--}" "${S_active[i]}"
  done
  for i in "${!C_name[@]}"; do man cp "$D" "${C_name[i]}" "${C_parent[i]:--}"; done
  man chain "$D" "${CH[@]}"
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
      # its qcow2 snapshot is now unknown; its child, if any, an orphan;
      # if it was the current one, none is (an info)
      want="INT_SNAPSHOT_UNKNOWN"
      if [ $((i + 1)) = ${#S_name[@]} ]; then want="$want NO_CURRENT"
      else want="$want MISSING_PARENT"; fi
      want="$want PARSE" ;;
    meta-int-missing)
      for i in "${!S_name[@]}"; do [ "${S_kind[i]}" = internal ] && break; done
      qemu-img snapshot -d "${S_name[i]}" "${S_src[i]}"
      man plant "$D" "qcow2 snapshot ${S_name[i]} deleted from ${S_src[i]}"
      man claim "$D" "revert ${S_name[i]}"
      want=INT_SNAPSHOT_MISSING ;;
    meta-int-unknown)
      qemu-img snapshot -c extra "$top"
      man plant "$D" "qcow2 snapshot extra made in $top"
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
      # a fresh guest write at 0 first: a data cluster of its own
      # (refcount 1, COPIED) right after its L2 table, whatever the image
      case $kind in img-l2|img-refcount) IMG=$img wr 0 64k 0 ;; esac
      case $kind in
        img-leak|combo-leak-*) IMG=$img add_cluster > /dev/null; IMG=$img add_cluster > /dev/null
          man img "$D" "$img" 0x040002 ;;
        img-refcount) IMG=$img set_refcount "$(IMG=$img data_off 0 0)" 0
          man img "$D" "$img" "0x040001 0x050002" ;;
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
  lane gen_domain "$d" "${KINDS[d - 1]}"
done
lane_wait
t_gen=$(now_ms); cpu_ms; c_gen=$CPU
diag "generated $N_DOM domains, $(find "$R/img" -type f | wc -l) image files in $(( t_gen - t_start )) ms"
grep -E '^(plant|shape) ' "$MAN" | sort -s -k2,2 | sed 's/^/#   /'

# ---- the audit, once ----
sums () { (cd "$R" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
sums > "$T/sums.before"
qcowkit audit --libvirt-root "$R" --output=jsonl > "$T/a.jsonl" 2> "$T/a.err"
a_rc=$?
t_audit=$(now_ms); cpu_ms; c_audit=$CPU
diag "audit: exit $a_rc in $(( t_audit - t_gen )) ms"



# ---- oracle 1: qemu-img check of every image, alone ----
mkdir -p "$T/q"
jq -r 'select(.type == "image" and .verdict != "not-checked") | .filename' "$T/a.jsonl" > "$T/images"
qcheck () {  # qcheck N FILE: $T/q/N.{json,err,rc}
  local spec="json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$2\"}}"
  local magic=; IFS= read -r -N 3 magic < "$2"
  [ "$magic" = QFI ] || spec=$2
  qemu-img check --output=json "$spec" > "$T/q/$1.json" 2> "$T/q/$1.err"
  echo $? > "$T/q/$1.rc"
}
n=0
while read -r f; do n=$((n + 1)); lane qcheck $n "$f"; done < "$T/images"
# per domain: qemu-img info of the chain (its snapshots and bitmaps), in
# one process; image by image where the chain does not open
qinfo () {  # qinfo DOMAIN IMAGE...: $T/q/DOMAIN.info, one JSON per image
  local f
  if ! qemu-img info --output=json --backing-chain "$2" > "$T/q/$1.info" 2> /dev/null; then
    for f in "${@:2}"; do
      qemu-img info --output=json "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$f\"}}" 2> /dev/null ||
        echo "{\"filename\": \"$f\", \"unreadable\": true}"
    done > "$T/q/$1.info"
  fi
}
while read -r _ d imgs; do lane qinfo "$d" $imgs; done < <(grep '^chain ' "$MAN")

# ---- oracle 2: a fresh embedded libvirt per domain ----
lane_wait
t_lv0=$(now_ms); cpu_ms; c_q=$CPU
ok "libvirt probed QEMU once: its capability cache" test -d "$LVC/cache/qemu/capabilities"
rm -rf "$LVC/etc/qemu" "$LVC/run"   # a skeleton: qemu.conf and the cache
mkdir -p "$LVC/etc/qemu" "$LVC/lib/qemu/snapshot" "$LVC/lib/qemu/checkpoint" "$T/lv"
t_lv1=$(now_ms)
# lv_domain D: root $T/lv/D with D's definition and metadata only; a
# first virsh loads it (its load log in lv.log) and prints its view; a
# second, on that root, is asked for what a problem says libvirt refuses
lv_domain () {
  local d=$1 O=$T/lv/$1 k cmds= what
  cp -a "$LVC" "$O" && cp "$R/etc/qemu/$d.xml" "$O/etc/qemu/"
  if [ -d "$PF/$d" ]; then cp -a "$PF/$d/." "$O/lib/qemu/"
  else
    for k in snapshot checkpoint; do
      [ ! -d "$R/lib/qemu/$k/$d" ] || cp -a "$R/lib/qemu/$k/$d" "$O/lib/qemu/$k/"
    done
  fi
  LIBVIRT_LOG_OUTPUTS="3:file:$O/lv.log" timeout 120 virsh -q -c "qemu:///embed?root=$O" \
    "snapshot-list $d --name; echo @@; snapshot-list $d --parent; echo @@;
     checkpoint-list $d --name; echo @@; checkpoint-list $d --parent; echo @@;
     snapshot-current $d --name" > "$O/out" 2> "$O/err"
  while read -r _ _ what; do
    case $what in
      "revert "*)   # on copies of the images: a revert writes
        mkdir -p "$O/img"; cp -a "$R/img/$d" "$O/img/"
        sed -i "s|$R/img/|$O/img/|g" "$O/etc/qemu/$d.xml" "$O"/lib/qemu/snapshot/$d/*.xml
        cmds="$cmds snapshot-revert $d ${what#revert };" ;;
      "redefine "*)
        cp "$O/lib/qemu/snapshot/$d/${what#redefine }.xml" "$O/redefine.xml"
        cmds="$cmds snapshot-create $d $O/redefine.xml --redefine;" ;;
    esac
  done < <(grep "^claim $d " "$MAN")
  [ -z "$cmds" ] || timeout 120 virsh -q -c "qemu:///embed?root=$O" "$cmds" > "$O/claim.out" 2> "$O/claim.err"
}
DOMS=$(jq -r 'select(.type == "domain") | .domain' "$T/a.jsonl")
t_lv1=$(now_ms)
for d in $DOMS; do lane lv_domain "$d"; done
lane_wait
t_lv2=$(now_ms); cpu_ms; c_lv=$CPU
n_dom=$(echo "$DOMS" | wc -w)
diag "libvirt: $n_dom fresh roots in $(( t_lv2 - t_lv1 )) ms with 2 lanes ($(( (t_lv2 - t_lv1) * 2 / n_dom )) ms of a lane per domain)"

# ---- assertions ----
# (each tool runs once over all the domains: on 2 busy cores every process
# counts; the rest is bash)
declare -A VEXIT=([clean]=0 [not-checked]=0 [leaks]=3 [in-use]=1 [error]=1 [corrupt]=2)
declare -A VRANK=([clean]=0 [not-checked]=1 [leaks]=2 [in-use]=3 [error]=4 [corrupt]=5)
# ssort WORDS...: the words sorted (bytewise), in $SORTED
ssort () {
  local -a a=($*)
  local i j t n=${#a[@]}
  for (( i = 1; i < n; i++ )); do
    t=${a[i]}
    for (( j = i - 1; j >= 0; j-- )); do
      [[ ${a[j]} > $t ]] || break
      a[j + 1]=${a[j]}
    done
    a[j + 1]=$t
  done
  SORTED="${a[*]}"
}
is "$n_dom $(grep -c '^chain ' "$MAN")" "$N_DOM $N_DOM" "one domain record per generated domain ($N_DOM)"

# images: audit's record against qemu-img check of the same image
jq -r 'select(.type == "image" and .verdict != "not-checked") | [.filename, .verdict, .format,
  (.checked | tostring), ."check-errors", .corruptions, .leaks, (."image-end-offset" // 0),
  ([.problems[].code] | unique | join(" ")), (."used-by" | join(" "))] | map(tostring) | join("\u001f")' "$T/a.jsonl" > "$T/recs"
jq -r '[input_filename, ."check-errors", (.corruptions // 0), (.leaks // 0), (."image-end-offset" // 0)] | @tsv' \
  "$T"/q/[0-9]*.json > "$T/qrep" 2> /dev/null
declare -A QREP ICODES REFUSES IMGV
while IFS=$'\t' read -r k ce co le ieo; do k=${k##*/}; QREP[${k%.json}]="$ce $co $le $ieo"; done < "$T/qrep"
declare -A WANT SN SP CN CP ACT INTS CLAIMS
while read -r k d rest; do
  read -r -a w <<< "$rest"
  case $k in
    img) ICODES[${w[0]}]=${w[*]:1} ;;
    refuses) REFUSES[${w[0]}]=${rest#* } ;;
    meta) WANT[$d]=$rest ;;
    snap) SN[$d]+=" ${w[0]}"
          [ "${w[1]}" = - ] || SP[$d]+=" ${w[0]}>${w[1]}"
          [ "${w[2]}" != 1 ] || ACT[$d]+=" ${w[0]}" ;;
    cp) CN[$d]+=" ${w[0]}"; [ "${w[1]}" = - ] || CP[$d]+=" ${w[0]}>${w[1]}" ;;
    int) INTS[$d]+=" ${w[0]}>${w[1]}" ;;
    claim) CLAIMS[$d]+="|$rest" ;;
  esac
done < "$MAN"
n=0 cmp=0 bad= refused= notcomp=0 codes_bad= n_qcow2=0 n_raw=0
while IFS=$'\x1f' read -r f v fmt chk ce co le ieo codes users; do
  n=$((n + 1)); read -r rc < "$T/q/$n.rc"
  IMGV[$f]=$v
  if [ "$fmt" = qcow2 ]; then n_qcow2=$((n_qcow2 + 1)); else n_raw=$((n_raw + 1)); fi
  [ "$codes" = "${ICODES[$f]:-}" ] || codes_bad="$codes_bad ${f#$R/img/}:audit=[$codes],planted=[${ICODES[$f]:-}]"
  err=$(< "$T/q/$n.err"); err=${err//$'\n'/ }
  if [ -n "${QREP[$n]:-}" ]; then
    cmp=$((cmp + 1))
    [ "${QREP[$n]} $rc" = "$ce $co $le $ieo ${VEXIT[$v]}" ] ||
      bad="$bad ${f#$R/img/}:qemu-img=[${QREP[$n]} exit $rc],audit=[$ce $co $le $ieo $v]"
  elif [ "$fmt" = raw ] && [ "$rc" = 63 ] && [[ $err == *"does not support checks"* ]] \
       && [ "$v $chk" = "clean false" ]; then
    notcomp=$((notcomp + 1))
  elif [ -n "${REFUSES[$f]:-}" ] && [[ $err =~ ${REFUSES[$f]} ]] \
       && [ "$rc" = "${VEXIT[$v]}" ] && [ "$v" != clean ]; then
    refused="$refused ${f#$R/img/}"
  else
    bad="$bad ${f#$R/img/}:qemu-img=[refused, exit $rc: ${err:0:120}],audit=[$v]"
  fi
done < "$T/recs"
diag "$n images: $n_qcow2 qcow2, $n_raw raw; counters compared on $cmp; not comparable: qemu-img refuses$refused (as its catalog case says), and $notcomp raw images (qemu-img has no check for raw)"
is "$bad" "" "every image: check-errors, corruptions, leaks, image-end-offset and the exit status are qemu-img check's; where it refuses, the refusal is the expected one"
ok "qemu-img compared the counters of every qcow2 image it opens ($cmp of $n_qcow2)" test "$cmp" -ge $(( n_qcow2 - 1 ))
is "$codes_bad" "" "every image record names exactly the planted problem codes (none on the others)"
is "$(jq -r 'select(.type == "image" and .verdict == "not-checked") | .reason' "$T/a.jsonl" | sed 's/ ([a-z]*)//' | sort -u | tr '\n' ';')" \
  "block device: not checked;network disk: not checked;" "network and block disks: not checked, with the reason"

# domains: libvirt's view against audit's metadata problems
jq -r 'select(.type == "domain") | [.domain, .verdict, .metadata.verdict, .exit,
  ([.metadata.problems[].name] | join(" ")),
  ([.metadata.problems[] | select(.name == "PARSE") | .message | capture("/(?<n>[^/]*)\\.xml: ").n] | join(" ")),
  ([.metadata.problems[] | select((.subject // "" | startswith("snapshot ")) and (.name == "MISSING_PARENT" or .name == "SELF_PARENT" or .name == "CYCLE"))] | length),
  ([.metadata.problems[] | "\(.name)@\(.subject // "" | gsub(" "; "_"))"] | join(" "))] | map(tostring) | join("\u001f")' \
  "$T/a.jsonl" > "$T/doms"
jq -r '(if type == "array" then .[] else . end) | [(input_filename | sub(".*/"; "") | sub("\\.info$"; "")), (.filename | sub("^json:.*\"filename\": *\""; "") | sub("\".*$"; "")),
  ([.snapshots // [] | .[].name] | join(",")), ([."format-specific".data.bitmaps // [] | .[].name] | join(" "))] | join("\u001f")' \
  "$T"/q/*.info > "$T/infos"
declare -A ISN IBM
while IFS=$'\x1f' read -r d f sn bm; do ISN[$d]+=" $f>$sn"; IBM[$d]+=" $bm"; done < "$T/infos"
declare -A CLASS
while read -r _ p cls _; do CLASS[$p]=$cls; done < <(qcowkit meta check --list-problems)
# What libvirt 9.0 logs while it loads metadata, and the problems whose
# presence means that it does (tests/meta-libvirt.sh's table, ERE => PROBLEMS)
LOGS=(
  "Failed to parse (snapshot|checkpoint) XML from file  =>  PARSE MISSING_NAME MISSING_STATE MISSING_CTIME MISSING_ACTIVE"
  "Too many snapshots claiming to be current  =>  MULTIPLE_CURRENT"
  "domain moment .*already exists  =>  DUPLICATE_NAME"
  "moment .* lacks parent  =>  MISSING_PARENT"
  "moment .* in circular chain  =>  SELF_PARENT CYCLE"
  "(Snapshots|Checkpoints) have inconsistent relations  =>  MISSING_PARENT SELF_PARENT CYCLE"
)
LOADFN='^(qemuDomain(Snapshot|Checkpoint)Load|virDomain(Moment|Snapshot|Checkpoint)[A-Za-z]*|virXML[A-Za-z]*)$'
MSG_RE=': (warning|error) : ([A-Za-z0-9_]+):[0-9]+ : (.*)$'
lv_logged () {  # LOGFILE: the LOGS rows libvirt's load log matches, and any other load message
  local line i fn msg known; local -a hit=()
  LG=
  [ -f "$1" ] || return 0
  while IFS= read -r line; do
    [[ $line =~ $MSG_RE ]] || continue
    fn=${BASH_REMATCH[2]} msg=${BASH_REMATCH[3]}
    [[ $fn =~ $LOADFN ]] || continue
    known=false
    for i in "${!LOGS[@]}"; do
      if [[ $msg =~ ${LOGS[i]%%  =>  *} ]]; then hit[i]=1; known=true; fi
    done
    $known || LG="${LG}not in LOGS: $msg;"
  done < "$1"
  for i in "${!hit[@]}"; do LG="$LG${LOGS[i]%%  =>  *};"; done
}
qk_logged () {  # NAMES: the LOGS rows audit's problems imply
  local i p
  QG=
  for i in "${!LOGS[@]}"; do
    for p in ${LOGS[i]#*  =>  }; do
      if [[ " $1 " == *" $p "* ]]; then QG="$QG${LOGS[i]%%  =>  *};"; break; fi
    done
  done
}
lv_view () {  # OUTFILE: libvirt's lists, parents and current snapshot (L_*)
  local out line sec=0; local -a f
  L_SN= L_SP= L_CN= L_CP= L_CUR= L_SEC=0
  out=$(< "$1"); out=${out//@@/$'\n@@\n'}
  while IFS= read -r line; do
    if [ "$line" = @@ ]; then sec=$((sec + 1)); L_CUR=; continue; fi
    read -r -a f <<< "$line"
    [ ${#f[@]} -gt 0 ] || continue
    case $sec in
      0) L_SN+=" ${f[0]}" ;;
      1) [ ${#f[@]} -lt 6 ] || L_SP+=" ${f[0]}>${f[5]}" ;;
      2) L_CN+=" ${f[0]}" ;;
      3) [ ${#f[@]} -lt 5 ] || L_CP+=" ${f[0]}>${f[4]}" ;;
      *) L_CUR=${f[0]} ;;
    esac
  done <<< "$out"
}
minus () {  # minus WORDS EXCLUDED: WORDS without those in EXCLUDED (or whose part before '>' is)
  local w r=
  for w in $1; do [[ " $2 " == *" ${w%%>*} "* ]] || r="$r $w"; done
  MINUS=$r
}
lv_bad= log_bad= cur_bad= side_bad= claim_bad= man_bad= verdict_bad= worst=clean
n_claims=0 n_logged=0 n_nocur=0
while IFS=$'\x1f' read -r d dv_got mv_got ex_got names skipped broken psubj; do
  O=$T/lv/$d
  ssort $names; names=$SORTED
  # the manifest: exactly the planted metadata problems
  ssort ${WANT[$d]}; want=$SORTED
  [ "$names" = "$want" ] || man_bad="$man_bad $d:audit=[$names],planted=[$want]"
  # what libvirt loaded: what was written but the files audit says it skips
  lv_view "$O/out"
  minus "${SN[$d]}" "$skipped"; ssort $MINUS; wsn=$SORTED
  minus "${SP[$d]}" "$skipped"; ssort $MINUS; wsp=$SORTED
  ssort ${CN[$d]}; wcn=$SORTED; ssort ${CP[$d]}; wcp=$SORTED
  ssort $L_SN; lsn=$SORTED; ssort $L_SP; lsp=$SORTED
  ssort $L_CN; lcn=$SORTED; ssort $L_CP; lcp=$SORTED
  [ "$lsn|$lsp|$lcn|$lcp" = "$wsn|$wsp|$wcn|$wcp" ] ||
    lv_bad="$lv_bad $d:libvirt=[$lsn|$lsp|$lcn|$lcp],written-but-skipped=[$wsn|$wsp|$wcn|$wcp]"
  # what it logs while loading: what audit's problems say it logs
  lv_logged "$O/lv.log"; qk_logged "$names"
  [ -z "$LG" ] || n_logged=$((n_logged + 1))
  [ "$LG" = "$QG" ] || log_bad="$log_bad $d:libvirt=[$LG],audit-implies=[$QG]"
  # the current snapshot: forgotten where audit says a relation is broken
  minus "${ACT[$d]}" "$skipped"; actives=$MINUS
  lcur=${L_CUR:-none}
  if [ "$broken" -gt 0 ]; then
    exp=none n_nocur=$((n_nocur + 1))
  elif [[ " $names " == *" MULTIPLE_CURRENT "* ]]; then
    exp="one of:$actives"
    [[ " $actives " != *" $lcur "* ]] || exp=$lcur
  else
    read -r exp <<< "$actives"; exp=${exp:-none}
  fi
  [ "$lcur" != none ] || [[ $(< "$O/err") == *"no current snapshot"* ]] || lcur="none, but: $(< "$O/err")"
  [ "$lcur" = "$exp" ] || cur_bad="$cur_bad $d:libvirt=[$lcur],expected=[$exp]"
  # image side: what libvirt's lists and qemu-img's disagree on
  side= have=" ${ISN[$d]} "
  for e in ${ISN[$d]}; do
    sn=${e#*>}
    for s in ${sn//,/ }; do [[ " $lsn " == *" $s "* ]] || side="$side INT_SNAPSHOT_UNKNOWN"; done
  done
  for e in ${INTS[$d]}; do
    img=${e%%>*} s=${e#*>}
    [[ " $lsn " == *" $s "* ]] || continue
    [[ $have =~ " $img>"([^ ]*,)?"$s"(,[^ ]*)?" " ]] || side="$side INT_SNAPSHOT_MISSING"
  done
  for b in ${IBM[$d]}; do [[ " $lcn " == *" $b "* ]] || side="$side BITMAP_UNKNOWN"; done
  for c in $lcn; do [[ " ${IBM[$d]} " == *" $c "* ]] || side="$side BITMAP_MISSING"; done
  ssort $side; side=$SORTED
  aside=
  for p in $names; do case $p in INT_SNAPSHOT_UNKNOWN|INT_SNAPSHOT_MISSING|BITMAP_UNKNOWN|BITMAP_MISSING) aside="$aside $p" ;; esac; done
  ssort $aside; aside=$SORTED
  [ "$side" = "$aside" ] || side_bad="$side_bad $d:libvirt-and-qemu-img=[$side],audit=[$aside]"
  # refusals the problems promise, asked of libvirt
  IFS='|' read -r -a claims <<< "${CLAIMS[$d]#|}"
  for what in "${claims[@]}"; do
    n_claims=$((n_claims + 1))
    case $what in
      "revert "*) p=INT_SNAPSHOT_MISSING ere="Could not apply snapshot '${what#revert }'" ;;
      "redefine "*) p=UUID_MISMATCH ere="definition for snapshot ${what#redefine } must use uuid" ;;
    esac
    [[ " $psubj " == *" $p@snapshot_${what#* } "* ]] && [[ $(< "$O/claim.err") =~ $ere ]] ||
      claim_bad="$claim_bad $d:$what:$(< "$O/claim.err")"
  done
  # verdicts: the metadata's from the planted problems' classes, the
  # domain's the worst of it and its disks' images
  mv=clean
  for p in $want; do
    case ${CLASS[$p]} in corruption) mv=corrupt ;; error) [ $mv = corrupt ] || mv=error ;; esac
  done
  dv=$mv
  while IFS=$'\x1f' read -r f v _ _ _ _ _ _ _ users; do
    [[ " $users " != *" $d:"* ]] || [ "${VRANK[$v]}" -le "${VRANK[$dv]}" ] || dv=$v
  done < "$T/recs"
  [ "$dv" != not-checked ] || dv=clean
  [ "$dv_got $mv_got $ex_got" = "$dv $mv ${VEXIT[$dv]}" ] ||
    verdict_bad="$verdict_bad $d:audit=[$dv_got $mv_got $ex_got],expected=[$dv $mv ${VEXIT[$dv]}]"
  [ "${VRANK[$dv]}" -le "${VRANK[$worst]}" ] || worst=$dv
done < "$T/doms"
is "$man_bad" "" "every domain record names exactly the planted metadata problems (none in the clean domains)"
is "$lv_bad" "" "a fresh libvirt per domain loads what was written but the files audit says it skips, with the written parents (snapshots and checkpoints)"
is "$log_bad" "" "what libvirt logs while loading each domain is what audit's problems say it logs ($n_logged domains log)"
is "$cur_bad" "" "libvirt's current snapshot is the written one, forgotten where audit reports a broken relation ($n_nocur domains)"
is "$side_bad" "" "audit's image-side metadata problems are where libvirt's lists and qemu-img's snapshots and bitmaps disagree"
is "$claim_bad" "" "where a problem says libvirt refuses an operation, a fresh libvirt refuses it ($n_claims asked)"
is "$verdict_bad" "" "each domain's verdict is the worst of its images' and its planted metadata's"
is "$a_rc" "${VEXIT[$worst]}" "the exit status is the worst verdict's ($worst)"
is "$(< "$T/a.err")" "" "audit printed no warning"
sums > "$T/sums.after"
ok "read-only: the sha256 of every file of the host is unchanged ($(wc -l < "$T/sums.before") files)" cmp -s "$T/sums.before" "$T/sums.after"
t_end=$(now_ms); cpu_ms
diag "wall ms: generation $(( t_gen - t_start )), audit $(( t_audit - t_gen )), qemu-img oracle $(( t_lv0 - t_audit )), libvirt oracle $(( t_lv2 - t_lv0 )), assertions $(( t_end - t_lv2 )); total $(( t_end - t_start ))"
diag "CPU ms (user+system, all processes): generation $c_gen, audit $(( c_audit - c_gen )), qemu-img oracle $(( c_q - c_audit )), libvirt oracle $(( c_lv - c_q )) ($(( (c_lv - c_q) / n_dom )) per domain), assertions $(( CPU - c_lv )); total $CPU"
diag "load average: $(< /proc/loadavg)"

[ -z "${AUDIT_HOST_KEEP:-}" ] || { rm -rf "$AUDIT_HOST_KEEP"; cp -a "$T" "$AUDIT_HOST_KEEP"; }
done_testing
