# Shared helpers for the lib/meta tests and benchmarks (sourced).

# meta_gen ROOT DOMAIN N LAYOUT [SHAPE [PAD [KIND]]]
# An embedded-driver-shaped tree under ROOT (ROOT/etc/qemu/DOMAIN.xml and
# ROOT/lib/qemu/KIND/...) with N snapshots (or checkpoints) s0..s(N-1), in
# LAYOUT per-file or bulk. SHAPE chain (each the child of the previous) or
# binary (s_i the child of s_((i-1)/2)). PAD filler lines in every <domain>
# (each about 90 bytes) to make large domains. The last one is current.
meta_gen () {
  local root=$1 dom=$2 n=$3 layout=$4 shape=${5:-chain} pad=${6:-0}
  local kind=${7:-snapshot}
  mkdir -p "$root/etc/qemu" "$root/lib/qemu/$kind"
  cat > "$root/etc/qemu/$dom.xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <uuid>6b1c2a2e-1d0a-4c57-9d0a-3e2b5f0c9a11</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
  </devices>
</domain>
XML
  awk -v n="$n" -v layout="$layout" -v shape="$shape" -v pad="$pad" \
      -v dom="$dom" -v kind="$kind" -v dir="$root/lib/qemu/$kind" '
    function hdr(f) {
      print "<!--" > f
      print "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE" > f
      print "OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:" > f
      print "  virsh " kind "-edit" > f
      print "or other application using the libvirt API." > f
      print "-->" > f
      print "" > f
    }
    function body(f, i, ind,   p, k) {
      el = (kind == "snapshot") ? "domainsnapshot" : "domaincheckpoint"
      print ind "<" el ">" > f
      print ind "  <name>s" i "</name>" > f
      if (kind == "snapshot") print ind "  <state>shutoff</state>" > f
      if (i > 0) {
        p = (shape == "binary") ? int((i - 1) / 2) : i - 1
        print ind "  <parent>" > f
        print ind "    <name>s" p "</name>" > f
        print ind "  </parent>" > f
      }
      print ind "  <creationTime>" (1700000000 + i) "</creationTime>" > f
      if (kind == "snapshot") print ind "  <memory snapshot=\x27no\x27/>" > f
      print ind "  <domain type=\x27qemu\x27>" > f
      print ind "    <name>" dom "</name>" > f
      print ind "    <uuid>6b1c2a2e-1d0a-4c57-9d0a-3e2b5f0c9a11</uuid>" > f
      print ind "    <memory unit=\x27KiB\x27>65536</memory>" > f
      print ind "    <os><type arch=\x27x86_64\x27 machine=\x27pc\x27>hvm</type></os>" > f
      print ind "    <devices>" > f
      for (k = 0; k < pad; k++)
        printf "%s      <interface type=\x27user\x27><mac address=\x2752:54:00:00:%02x:%02x\x27/><model type=\x27virtio\x27/></interface>\n", ind, int(k / 256) % 256, k % 256 > f
      print ind "    </devices>" > f
      print ind "  </domain>" > f
      if (layout == "per-file" && kind == "snapshot")
        print ind "  <active>" (i == n - 1 ? 1 : 0) "</active>" > f
      print ind "</" el ">" > f
    }
    BEGIN {
      if (layout == "bulk") {
        f = dir "/" dom ".xml"
        hdr(f)
        print "<" kind "s current=\x27s" (n - 1) "\x27>" > f
        for (i = 0; i < n; i++) body(f, i, "  ")
        print "</" kind "s>" > f
        close(f)
      } else {
        system("mkdir -p \"" dir "/" dom "\"")
        for (i = 0; i < n; i++) {
          f = dir "/" dom "/s" i ".xml"
          hdr(f); body(f, i, ""); close(f)
        }
      }
    }'
}

# problems JSONFILE: the sorted problem names of a meta check --output=json
problems () { jq -r '[.problems[].name] | sort | join(" ")' "$1"; }

# lab_init: an embedded-libvirt lab (LIBVIRT-LAB.md) under $ROOT, a 64 MiB
# qcow2 disk $IMG/vm1.qcow2, and the definition of vm1 using it in
# $T/dom.xml (not defined yet: V "define $T/dom.xml; ..."). The QEMU user
# is root: no libvirt-qemu account is needed, and the capability cache
# stays valid (as libvirt-qemu, /dev/kvm is not usable and libvirt
# re-probes QEMU on every connection, ~15 s each).
lab_init () {
  mkdir -p "$ROOT/etc" "$IMG"
  printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' \
    > "$ROOT/etc/qemu.conf"
  qemu-img create -q -f qcow2 "$IMG/vm1.qcow2" 64M
  cat > "$T/dom.xml" <<XML
<domain type='qemu'><name>vm1</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$IMG/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>
XML
  at_exit lab_stop_guests
}
# lab_stop_guests: stop what the lab's libvirt left running. An embedded
# libvirt leaves its guests running when virsh exits, and so a virsh
# killed between "start" and "destroy" left a TCG guest; a virsh killed
# while it probed QEMU's capabilities left the probing QEMU (daemons, not
# children of the test). Killed with the test, a virsh in the foreground
# would go on and might start more: first every virsh on this lab, then
# every qemu-system; each found by its command line naming $ROOT (a
# unique scratch path). SIGTERM, 5 s later SIGKILL.
lab_stop_guests () {
  lab_kill_named virsh
  lab_kill_named qemu-system
}
lab_kill_named () {  # WORD: processes whose command line has WORD and $ROOT
  local c p i s pids=
  for c in /proc/[0-9]*/cmdline; do
    p=${c#/proc/}; p=${p%/cmdline}
    [ "$p" != $$ ] || continue
    s=$(tr '\0' ' ' 2> /dev/null < "$c") || continue
    case $s in *"$1"*"$ROOT"*) pids="$pids $p" ;; esac
  done
  [ -n "$pids" ] || return 0
  echo "# stopping what the lab left running ($1):$pids"
  kill -TERM $pids 2> /dev/null
  for i in $(seq 100); do
    s=
    for p in $pids; do
      { read -r c < "/proc/$p/stat"; } 2> /dev/null || continue
      c=${c##*) }
      [ "${c%% *}" = Z ] || s="$s $p"
    done
    pids=$s
    [ -n "$pids" ] || return 0
    sleep 0.05
  done
  kill -KILL $pids 2> /dev/null
}
# Q SUBCOMMAND ARGS: qcowkit meta on the lab
Q () { qcowkit meta "$1" --libvirt-root "$ROOT" "${@:2}"; }
# lab_disk: vm1's disk vda as libvirt has it now (domblklist)
lab_disk () { V "domblklist vm1" | awk '$1 == "vda" { print $2 }'; }
# lab_write OFFSET PATTERN: 1 MiB of the guest's disk written, as a guest
# would between snapshots
lab_write () { qemu-io -f qcow2 -c "write -P $2 $1 1M" "$(lab_disk)" > /dev/null; }
# V ARGS: virsh on the lab under $ROOT
V () { timeout 120 virsh -q -c "qemu:///embed?root=$ROOT" "$@"; }

# lab_internal [RAW]: after lab_init, vm1 defined and the internal
# snapshots i1 <- i2 <- i3 made by libvirt (snapshot-create-as on the
# inactive domain), guest writes at 0, 1M, 2M and 3M between them; with
# RAW, the guest data at i1 saved there. Output in $T/mk.out.
lab_internal () {
  { V "define $T/dom.xml" && lab_write 0 1 && V "snapshot-create-as vm1 i1" \
    && { [ -z "${1:-}" ] || qemu-img convert -O raw "$(lab_disk)" "$1"; } \
    && lab_write 1M 2 && V "snapshot-create-as vm1 i2" && lab_write 2M 3 \
    && V "snapshot-create-as vm1 i3" && lab_write 3M 4; } > "$T/mk.out" 2>&1
}
# lab_refusable KIND: make i1 of the internal lab a snapshot the offline
# writers refuse. memory: state running with its memory (libvirt would
# resume the saved VM); manual: vda's snapshot made outside libvirt;
# mixed: vda internal and a second disk, vdb, external (vdb.qcow2 frozen,
# vdb.i1 its overlay and the definition's disk), which libvirt itself
# refuses to create. none: i1 as it is.
lab_refusable () {
  local x=$ROOT/lib/qemu/snapshot/vm1/i1.xml d=$ROOT/etc/qemu/vm1.xml vdb
  vdb="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>"
  case $1 in
    memory)
      sed -i -e 's|<state>shutoff</state>|<state>running</state>|' \
        -e "s|<memory snapshot='no'/>|<memory snapshot='internal'/>|" "$x" ;;
    manual)
      sed -i "s|<disk name='vda' snapshot='internal'/>|<disk name='vda' snapshot='manual'/>|" "$x" ;;
    mixed)
      qemu-img create -q -f qcow2 "$IMG/vdb.qcow2" 1M &&
      qemu-img create -q -f qcow2 -b "$IMG/vdb.qcow2" -F qcow2 "$IMG/vdb.i1" 1M &&
      sed -i -e "s|<disk name='vda' snapshot='internal'/>|&<disk name='vdb' snapshot='external' type='file'><driver type='qcow2'/><source file='$IMG/vdb.i1'/></disk>|" \
        -e "s|</devices>|$(printf "$vdb" "$IMG/vdb.qcow2")&|" "$x" &&
      sed -i "s|</devices>|$(printf "$vdb" "$IMG/vdb.i1")&|" "$d" ;;
    none) ;;
  esac
}
# lab_snaps: the qcow2 snapshot names in vm1.qcow2, in table order
lab_snaps () { qemu-img snapshot -l "$IMG/vm1.qcow2" | awk 'NR > 2 { print $2 }' | tr '\n' ' '; }

# lab_save: keep the lab as it is now (the metadata, the definitions, the
# images) in $SAVE ($T/save); lab_restore puts exactly that back, for the
# next case of a test that damages or changes it.
lab_save () {
  SAVE=$T/save
  rm -rf "$SAVE"
  mkdir -p "$SAVE"
  cp -a "$ROOT/lib/qemu" "$SAVE/qemu"
  cp -a "$ROOT/etc/qemu" "$SAVE/etc"
  cp -a "$IMG" "$SAVE/img"
}
lab_restore () {
  rm -rf "$ROOT/lib/qemu" "$ROOT/etc/qemu" "$IMG"
  cp -a "$SAVE/qemu" "$ROOT/lib/qemu"
  cp -a "$SAVE/etc" "$ROOT/etc/qemu"
  cp -a "$SAVE/img" "$IMG"
}

# lab_hold_driver: start an embedded libvirt on the lab's root that runs
# (holding its driver's pid file lock, as libvirtd would) until
# lab_release_driver; asserts that the lock is held (60 s at most) and
# sets $lab_driver_pid. lab_release_driver tells it to quit and returns
# virsh's exit status.
lab_hold_driver () {
  local fifo=$T/driver.fifo
  rm -f "$fifo"
  mkfifo "$fifo"
  timeout 60 virsh -q -c "qemu:///embed?root=$ROOT" < "$fifo" > /dev/null 2>&1 &
  lab_driver_pid=$!
  kill_on_exit "$lab_driver_pid"
  exec 9> "$fifo"
  ok "the embedded driver holds its lock" wait_for 60 lab_driver_held
}
lab_driver_held () {
  local ino
  ino=$(stat -c %i "$ROOT/run/qemu/driver.pid" 2>/dev/null) || return 1
  grep -qE "POSIX +ADVISORY +WRITE +[0-9]+ +[0-9a-f]+:[0-9a-f]+:$ino " /proc/locks
}
lab_release_driver () {
  echo quit >&9
  exec 9>&-
  stop_process "$lab_driver_pid" 30
}
