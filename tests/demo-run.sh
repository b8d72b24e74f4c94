#!/bin/bash
# The qcowkit demo: make a small VM disk, damage it the way a host crash and
# a buggy tool would, show that QEMU refuses it, and show what qcowkit reads
# and recovers. Run through ./quickstart demo (or ./run bash tests/demo-run.sh).
set -euo pipefail

D=${QCOWKIT_DEMO_DIR:-$(mktemp -d /tmp/qcowkit-demo.XXXXXX)}
mkdir -p "$D"
cd "$D"
say () { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run () { printf '$ %s\n' "$*"; "$@"; }

say "1. A 64 MiB VM disk with data, an internal snapshot and a dirty bitmap"
rm -f vm.qcow2
qemu-img create -q -f qcow2 vm.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 8M 512k' \
        -c 'write -z 16M 1M' vm.qcow2 >/dev/null
qemu-img snapshot -c before-upgrade vm.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 32M 2M' vm.qcow2 >/dev/null
qemu-img bitmap --add vm.qcow2 backup-0
qemu-img convert -O raw vm.qcow2 expected.raw
qemu-img convert -l snapshot.name=before-upgrade -O raw vm.qcow2 expected-snap.raw
echo "guest data sha256: $(sha256sum < expected.raw | cut -c1-16)..."

say "2. Damage: the host crashed mid-write and a tool wrote a bad snapshot entry"
# dirty + corrupt bits (incompatible_features, byte 79)
printf '\x03' | dd of=vm.qcow2 bs=1 seek=79 conv=notrunc status=none
# snapshot entry 0: extra_data_size (entry offset + 36) = 2000 > QEMU's 1 KiB
snap=$((16#$(od -An -tx1 -j64 -N8 vm.qcow2 | tr -d ' \n')))
printf '\x00\x00\x07\xd0' | dd of=vm.qcow2 bs=1 seek=$((snap + 36)) conv=notrunc status=none
echo "set the dirty and corrupt bits; snapshot entry at 0x$(printf %x $snap) claims 2000 bytes of extra data"

say "3. QEMU refuses the image"
run qemu-img info vm.qcow2 || echo "(qemu-img info: exit $?)"
run qemu-img convert -O raw vm.qcow2 qemu.raw || echo "(qemu-img convert: exit $?)"

say "4. qcowkit reads what can be read and says what cannot"
run qcowkit info vm.qcow2 || true

say "5. qcowkit recovers the guest data anyway (reading never needs refcounts)"
run qcowkit export vm.qcow2 recovered.raw
if cmp -s expected.raw recovered.raw; then
  echo "recovered.raw is byte-identical to the guest data before the damage"
else
  echo "recovered.raw DIFFERS from the guest data" >&2
  exit 1
fi
run qcowkit map vm.qcow2

say "6. qcowkit check: what is wrong, with a stable code per problem (read-only)"
run qcowkit check vm.qcow2 || echo "(qcowkit check: exit $?, qemu-img check's code for corruptions; qemu-img check itself stops at the snapshot table: exit 1, Check failed)"

say "7. Repair: qemu-img check -r all deletes the snapshot, qcowkit repair keeps it"
cp vm.qcow2 damaged.qcow2
cp vm.qcow2 qemu-repaired.qcow2
run qemu-img check -r all qemu-repaired.qcow2 > /dev/null 2>&1 || true
echo "(qemu-img check -r all: exit $?, on a copy)"
run qemu-img snapshot -l qemu-repaired.qcow2
if [ -z "$(qemu-img snapshot -l qemu-repaired.qcow2)" ]; then
  echo "(no snapshot left: qemu-img dropped 'before-upgrade' and freed its clusters)"
fi
rm -f vm.qcow2.qkundo
run qcowkit repair -y vm.qcow2 || echo "(qcowkit repair: exit $?: 1 means fixed)"
run qemu-img check vm.qcow2
run qemu-img snapshot -l vm.qcow2
run qemu-img compare -f raw -F qcow2 expected.raw vm.qcow2
cp vm.qcow2 vm-repaired.qcow2

say "8. qcowkit undo puts back every byte the repair changed"
run qcowkit undo vm.qcow2.qkundo vm.qcow2
if cmp -s vm.qcow2 damaged.qcow2; then
  echo "vm.qcow2 is byte-identical to the damaged image again"
else
  echo "vm.qcow2 DIFFERS from the damaged image after undo" >&2
  exit 1
fi

say "9. A second VM whose libvirt snapshot metadata went wrong"
# web.qcow2 has internal snapshots s1 and s2, plus one taken by hand
rm -rf web.qcow2 libvirt
qemu-img create -q -f qcow2 web.qcow2 16M
qemu-img snapshot -c s1 web.qcow2
qemu-img snapshot -c s2 web.qcow2
qemu-img snapshot -c manual web.qcow2
# the embedded driver's layout: libvirt/etc/qemu/web.xml and
# libvirt/lib/qemu/snapshot/web/NAME.xml
mkdir -p libvirt/etc/qemu libvirt/lib/qemu/snapshot/web
domain () {
  cat <<XML
<domain type='kvm'>
  <name>web</name>
  <uuid>3f1e5d3c-8a46-4c7e-9a3b-2f8d7c1e6b01</uuid>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$D/web.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
XML
}
domain > libvirt/etc/qemu/web.xml
# snapshot NAME PARENT TIME ACTIVE
snapshot () {
  {
    echo "<domainsnapshot>"
    echo "  <name>$1</name>"
    echo "  <state>shutoff</state>"
    [ -z "$2" ] || echo "  <parent><name>$2</name></parent>"
    echo "  <creationTime>$3</creationTime>"
    echo "  <memory snapshot='no'/>"
    echo "  <disks><disk name='vda' snapshot='internal'/></disks>"
    domain | sed 's/^/  /'
    echo "  <active>$4</active>"
    echo "</domainsnapshot>"
  } > "libvirt/lib/qemu/snapshot/web/$1.xml"
}
snapshot s1 "" 1700000000 0
snapshot s2 s1 1700000100 1
# s3's parent was deleted by hand, s3 is not in the image, and it is
# marked current as well as s2
snapshot s3 s-gone 1700000200 1
echo "s1 <- s2 (current), s3 (parent s-gone missing, also marked current)"
run qcowkit meta tree web --libvirt-root libvirt || true
run qcowkit meta check web --libvirt-root libvirt || echo "(qcowkit meta check: exit $?)"

say "10. qcowkit meta repair: each fix shown as a diff, every old file kept"
# -y makes every fix; --drop-orphaned-metadata also removes s3, whose
# snapshot is in no image ('manual' is adopted instead)
run qcowkit meta repair -y --drop-orphaned-metadata web --libvirt-root libvirt \
  || echo "(qcowkit meta repair: exit $?: 1 means fixed and now clean)"
echo "the libvirt view after the repair (meta tree prints what virsh snapshot-list --tree prints):"
run qcowkit meta tree web --libvirt-root libvirt
run qcowkit meta check web --libvirt-root libvirt || echo "(qcowkit meta check: exit $?)"
run ls -A libvirt/lib/qemu/snapshot/ libvirt/lib/qemu/snapshot/.web.qk-repair.1

say "11. qcowkit audit of the demo host, as before an upgrade (read-only)"
# the first VM becomes a libvirt domain too; its disk is damaged again
# since the undo of step 8
sed "s/<name>web</<name>vm</; s|/web.qcow2'|/vm.qcow2'|; s/6b01</6b02</" \
  libvirt/etc/qemu/web.xml > libvirt/etc/qemu/vm.xml
run qcowkit audit --libvirt-root libvirt \
  || echo "(qcowkit audit: exit $?: the worst verdict, 2 corrupt)"
echo "one JSON line per image and per domain, for fleets (--output=jsonl):"
qcowkit audit --libvirt-root libvirt --output=jsonl | grep '"type":"image"' \
  | grep '"domain":"vm"' | cut -c1-150 || true

say "Files are in $D"
