#!/bin/bash
# --sysroot: a host's disk mounted elsewhere. The default locations, the
# image paths inside the XML and the backing file names inside the images
# all resolve under the sysroot; absolute symlinks and ".." stay inside it.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img jq
scratch

SYS=$T/sys
I=/var/lib/libvirt/images
mkdir -p "$SYS/etc/libvirt/qemu" "$SYS/var/lib/libvirt/qemu/snapshot/web" \
         "$SYS/var/lib/libvirt/qemu/checkpoint" "$SYS$I" "$SYS/srv/real"
# the base lives behind an absolute symlink, as on many hosts
qemu-img create -q -f qcow2 "$SYS/srv/real/base.qcow2" 16M
ln -s /srv/real "$SYS$I/pool"
qemu-img snapshot -c s1 "$SYS/srv/real/base.qcow2"
# the overlay names its backing file by its absolute path on the host
qemu-img create -q -f qcow2 -u -F qcow2 -b "$I/pool/base.qcow2" "$SYS$I/web.ovl" 16M
cat > "$SYS/etc/libvirt/qemu/web.xml" <<XML
<domain type='kvm'><name>web</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$I/web.ovl'/><target dev='vda' bus='virtio'/></disk></devices></domain>
XML
snap () {  # NAME PARENT ACTIVE DISKS DOMAIN-SOURCE
  cat > "$SYS/var/lib/libvirt/qemu/snapshot/web/$1.xml" <<XML
<domainsnapshot>
  <name>$1</name>
  <state>shutoff</state>
${2:+  <parent><name>$2</name></parent>}
  <creationTime>$((1700000000 + ${#1}))</creationTime>
  <disks>
$4
  </disks>
  <domain type='kvm'><name>web</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
    <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='$5'/><target dev='vda' bus='virtio'/></disk></devices></domain>
  <active>$3</active>
</domainsnapshot>
XML
}
snap s1 "" 0 "    <disk name='vda' snapshot='internal'/>" "$I/pool/base.qcow2"
snap e1 s1 1 "    <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='$I/web.ovl'/></disk>" \
  "$I/pool/../pool/base.qcow2"

Q () { qcowkit meta "$@"; }
Q check --sysroot "$SYS" web --output=json > "$T/c.json"; rc=$?
is "$rc $(jq -r '[.problems[].name] | join(" ")' "$T/c.json")" "0 " \
  "a host's metadata under --sysroot checks clean, images included"
is "$(jq -r .snapshots.location "$T/c.json")" "$SYS/var/lib/libvirt/qemu/snapshot/web" \
  "the default location is under the sysroot"
is "$(jq -r .uuid "$T/c.json")" "11111111-2222-3333-4444-555555555555" "the domain definition is read from the sysroot"

# the same without --sysroot: the host paths do not exist here
Q check --config-dir "$SYS/etc/libvirt/qemu" --state-dir "$SYS/var/lib/libvirt/qemu" web --output=json > "$T/c.json"
case $(jq -r '[.problems[].name] | join(" ")' "$T/c.json") in
  *IMAGE_MISSING*) pass "without --sysroot, the images are looked for on this host" ;;
  *) fail "without --sysroot, the images are looked for on this host" ;;
esac

# damage under the sysroot is found there
qemu-img snapshot -d s1 "$SYS/srv/real/base.qcow2"
Q check --sysroot "$SYS" web --output=json > "$T/c.json"
is "$(jq -r '[.problems[].name] | join(" ")' "$T/c.json")" "INT_SNAPSHOT_MISSING" \
  "a qcow2 snapshot deleted behind the symlink is found"
qemu-img snapshot -c s1 "$SYS/srv/real/base.qcow2"

# an absolute symlink or .. never leaves the sysroot
ln -sfn /etc "$SYS$I/pool"
mkdir -p "$SYS/etc"; : > "$SYS/etc/base.qcow2"
Q check --sysroot "$SYS" web --output=json > "$T/c.json"
got=$(jq -r '[.problems[].name] | sort | join(" ")' "$T/c.json")
case $got in
  *INT_SNAPSHOT_NOT_QCOW2*) pass "a symlink to /etc resolves to the sysroot's /etc ($got)" ;;
  *) fail "a symlink to /etc resolves to the sysroot's /etc" "$got" ;;
esac
sed -i "s|$I/pool/base.qcow2|$I/../../../../../../../srv/real/base.qcow2|" \
  "$SYS/var/lib/libvirt/qemu/snapshot/web/s1.xml"
ln -sfn /srv/real "$SYS$I/pool"
Q check --sysroot "$SYS" web --output=json > "$T/c.json"
is "$(jq -r '[.problems[].name] | join(" ")' "$T/c.json")" "" \
  "'..' past the top stays at the sysroot's /"

# convert works under a sysroot too
ok "convert --sysroot --to bulk" sh -c "qcowkit meta convert --sysroot '$SYS' --to bulk --no-backup web > /dev/null"
ok "the bulk file is under the sysroot" test -f "$SYS/var/lib/libvirt/qemu/snapshot/web.xml"
Q check --sysroot "$SYS" web --output=json > "$T/c.json"
is "$(jq -r '.snapshots.layout + " " + .snapshots.current + " " + ([.problems[].name] | join(" "))' "$T/c.json")" \
  "bulk e1 " "and checks clean"
done_testing
