#!/bin/bash
# qcowkit rescue over a generated sysroot with libvirt domains: a clean
# qcow2 and a raw disk, a 3-level chain whose backing file is named by
# its absolute path on the broken host (resolved under the sysroot), a
# damaged image (a data cluster past EOF, a misaligned one, a corrupt
# refcount table), an internal snapshot (--snapshots), a network disk
# (listed, not exported), an image held by qemu-io (in use; -U exports
# it). Oracle: qemu-img convert -O raw of each image (cmp); for the damaged
# one, convert of the image before the damage with the two planted
# clusters zeroed, and the unreadable ranges exactly the planted ones.
# Then: sha256 in the manifest = sha256sum; a rerun skips complete disks
# and redoes a truncated one; --to inside the sysroot and too little free
# space are refused; the sources are unchanged.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
command -v qcowkit >/dev/null 2>&1 ||
  PATH=$(cd "${top_builddir:-$srcdir}" && pwd)/tools:$PATH
POKE=$(cd "${top_builddir:-$srcdir}" && pwd)/tests/qkpoke
require qemu-img qemu-io qcowkit jq
scratch
cd "$T" || exit 1

S=$T/sys                             # the broken host's root
I=/var/lib/libvirt/images            # image directory, as the host sees it
mkdir -p "$S$I" "$S/etc/libvirt/qemu" ref
MiB=1048576

# ---- images, and the references (qemu-img convert) ----
qemu-img create -q -f qcow2 "$S$I/clean.qcow2" $((4 * MiB))
qio -c 'write -P 0x11 0 1M' -c 'write -P 0x12 3M 64k' "$S$I/clean.qcow2"
qemu-img create -q -f raw "$S$I/raw.img" $((2 * MiB))
qemu-io -f raw -c 'write -P 0x21 64k 128k' "$S$I/raw.img" > /dev/null

qemu-img create -q -f qcow2 "$S$I/base.qcow2" $((4 * MiB))
qio -c 'write -P 0x31 0 4M' "$S$I/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$S$I/mid.qcow2"
qio -c 'write -P 0x32 1M 1M' "$S$I/mid.qcow2"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$S$I/top.qcow2"
qio -c 'write -P 0x33 1536k 1M' -c 'write -z 3M 64k' "$S$I/top.qcow2"

qemu-img create -q -f qcow2 "$S$I/snap.qcow2" $((4 * MiB))
qio -c 'write -P 0x41 0 2M' "$S$I/snap.qcow2"
qemu-img snapshot -c s1 "$S$I/snap.qcow2"
qio -c 'write -P 0x42 512k 1M' -c 'write -z 2M 64k' "$S$I/snap.qcow2"

qemu-img create -q -f qcow2 "$S$I/busy.qcow2" $((1 * MiB))
qio -c 'write -P 0x51 0 512k' "$S$I/busy.qcow2"

# 4 KiB clusters: an L2 table covers 2 MiB; guest 7M is compressed
qemu-img create -q -f qcow2 -o cluster_size=4096 "$S$I/bad.qcow2" $((8 * MiB))
qio -c 'write -c -P 0x62 7M 4k' -c 'write -P 0x61 0 7M' \
  -c 'write -P 0x63 7172k 1020k' "$S$I/bad.qcow2"

for i in clean top snap busy bad; do
  qemu-img convert -O raw "$S$I/$i.qcow2" "ref/$i.raw"
done
qemu-img convert -l s1 -O raw "$S$I/snap.qcow2" ref/snap@s1.raw
cp "$S$I/raw.img" ref/raw.raw
# mid names its backing file by the host's absolute path: only a lookup
# under the sysroot finds it
qemu-img rebase -u -F qcow2 -b "$I/base.qcow2" "$S$I/mid.qcow2"

# ---- the damage: in the first L2 table, entry 5 points past EOF and
# entry 9 is misaligned; L1[2] (guest 4M-6M) points past EOF; the
# compressed cluster at 7M is garbage; refcount table entry 0 is bad ----
b=$S$I/bad.qcow2
hexv () { printf 0x%x "$1"; }
l1=$($POKE "$b" peek 40 be64)
l2=$(( $($POKE "$b" peek "$l1" be64) & 0x00fffffffffffe00 ))
e9=$($POKE "$b" peek $((l2 + 72)) be64)
$POKE "$b" $((l2 + 40)) be64 "$(hexv $(( (1 << 63) | (256 * MiB) )))"
$POKE "$b" $((l2 + 72)) be64 "$(hexv $(( e9 + 512 )))"
$POKE "$b" $((l1 + 16)) be64 "$(hexv $(( (1 << 63) | (512 * MiB) )))"
l2c=$(( $($POKE "$b" peek $((l1 + 24)) be64) & 0x00fffffffffffe00 ))
ec=$($POKE "$b" peek $((l2c + 256 * 8)) be64)
$POKE "$b" $(( ec & 0x03ffffffffffffff )) "$(printf 'ff%.0s' {1..64})"
rt=$($POKE "$b" peek 48 be64)
$POKE "$b" "$rt" be64 0x12345
# the reference: the planted ranges read as zeros (holes)
planted="20480+4096 36864+4096 4194304+2097152 7340032+4096"
for r in $planted; do
  dd if=/dev/zero of=ref/bad.raw bs=4k seek=$((${r%+*} / 4096)) \
    count=$((${r#*+} / 4096)) conv=notrunc 2>/dev/null
done

# ---- the domains ----
disk () {  # disk TYPE DEV FORMAT SOURCE-ATTR
  echo "<disk type='$1' device='disk'><driver name='qemu' type='$3'/>$4<target dev='$2'/></disk>"
}
domain () {  # domain NAME DISK...
  local n=$1
  shift
  { echo "<domain type='kvm'><name>$n</name><devices>"
    printf '%s\n' "$@"
    echo "</devices></domain>"; } > "$S/etc/libvirt/qemu/$n.xml"
}
domain vm-clean "$(disk file vda qcow2 "<source file='$I/clean.qcow2'/>")" \
  "$(disk file vdb raw "<source file='$I/raw.img'/>")" \
  "$(disk network vdc raw "<source protocol='nbd' name='x'><host name='h'/></source>")"
domain vm-chain "$(disk file vda qcow2 "<source file='$I/top.qcow2'/>")"
domain vm-snap "$(disk file vda qcow2 "<source file='$I/snap.qcow2'/>")"
domain vm-bad "$(disk file vda qcow2 "<source file='$I/bad.qcow2'/>")"
domain vm-busy "$(disk file vda qcow2 "<source file='$I/busy.qcow2'/>")"

sums () { (cd "$S$I" && sha256sum -- *); }
sums > sums.before

# ---- refusals ----
qcowkit rescue --sysroot "$S" --to "$S/var/rescue" > /dev/null 2> err
rc=$?
ok "--to inside the sysroot is refused (status 1, nothing made)" \
  eval "[ $rc = 1 ] && grep -q 'inside the sysroot' err && [ ! -e '$S/var/rescue' ]"
ln -s "$S/var" sneaky
qcowkit rescue --sysroot "$S" --to sneaky/rescue > /dev/null 2> err
rc=$?
ok "... also through a symlink" \
  eval "[ $rc = 1 ] && grep -q 'inside the sysroot' err"
QCOWKIT_RESCUE_FREE=65536 qcowkit rescue --sysroot "$S" --to small \
  > /dev/null 2> err
rc=$?
ok "too little free space is refused before writing" \
  eval "[ $rc = 1 ] && grep -q 'bytes free' err && [ -z \"\$(ls small)\" ]"

# ---- the rescue ----
start_holder "$S$I/busy.qcow2" || fail "qemu-io holds busy.qcow2"
qcowkit rescue --sysroot "$S" --snapshots --output=json --to out \
  > out.json 2> err
rc=$?
is "$rc" 12 "exit status 12: unreadable ranges (4) and a disk not exported (8)"
M=out/manifest.json
ok "stdout is the manifest" cmp -s out.json $M
ok "MANIFEST.txt written" test -s out/MANIFEST.txt

same=
for p in vm-clean/vda:clean vm-clean/vdb:raw vm-chain/vda:top \
         vm-snap/vda:snap vm-snap/vda@s1:snap@s1 vm-bad/vda:bad; do
  cmp -s "out/${p%%:*}.raw" "ref/${p#*:}.raw" || same="$same ${p%%:*}"
done
is "$same" "" "each output is qemu-img convert's (chain through the sysroot, \
raw, snapshot s1, and the damaged image but for the planted clusters)"

q () { jq -r "$1" $M; }
is "$(q '.disks[] | select(.domain=="vm-bad") | .unreadable
         | map("\(.start)+\(.length)") | join(" ")')" \
   "$planted" "the damaged image's unreadable ranges are exactly the planted ones"
is "$(q '.disks[] | select(.domain=="vm-bad") | .unreadable[0].reason')" \
   "data cluster past the end of $S$I/bad.qcow2" "... reason: past the end of the file"
is "$(q '.disks[] | select(.domain=="vm-bad") | .unreadable[1:] | map(.reason)[]' |
     sed 's/.*\(not cluster aligned\).*/\1/; s/^L2 table .* past the end.*/L2 past EOF/; s/.*compressed cluster.*/compressed/' | tr '\n' ' ')" \
   "not cluster aligned L2 past EOF compressed " \
   "... and: misaligned cluster, L2 table past EOF, compressed data"
ok "the damaged image's check counts: corruptions, and the refcount table" \
  eval "[ \"\$(q '.disks[] | select(.domain==\"vm-bad\") | .chain[0].check
          | (.corruptions >= 2) and (.problems.PAST_EOF == 2)
            and (.problems.L2_DATA_UNALIGNED == 1) and (.problems.REFT_RESERVED == 1)')\" = true ]"
is "$(q '.disks[] | select(.domain=="vm-chain") | .chain | map(.filename) | join(" ")')" \
   "$S$I/top.qcow2 $S$I/mid.qcow2 $I/base.qcow2" \
   "the chain is listed, top first (as each image names the next)"
bad=
while read -r out sha; do
  [ "$(sha256sum < "out/$out" | cut -d' ' -f1)" = "$sha" ] || bad="$bad $out"
  (cd "out/$(dirname "$out")" && sha256sum -c --quiet "$(basename "$out").sha256") ||
    bad="$bad $out.sha256"
done < <(q '.disks[] | select(.sha256) | "\(.output) \(.sha256)"')
is "$bad" "" "sha256 in the manifest and in NAME.sha256 = sha256sum of each output"
is "$(q '.disks[] | select(.domain=="vm-clean" and .target=="vdc") | .status')" \
   skipped "the network disk is listed, not exported"
is "$(q '.disks[] | select(.domain=="vm-busy") | "\(.status) \(.["in-use"])"')" \
   "skipped true" "the image qemu-io holds is reported in use, not exported"
is "$(q '.disks[] | select(.domain=="vm-clean" and .target=="vda") | .["bytes-written"]')" \
   $((MiB + 65536)) "bytes written: the data, not the holes"
ok "no .part left" eval "[ -z \"\$(find out -name '*.part')\" ]"

# ---- rerun: -U exports the busy disk; complete ones are skipped, a
# truncated one is written again ----
truncate -s 1M out/vm-chain/vda.raw
qcowkit rescue --sysroot "$S" --snapshots -U --output=json --to out \
  > /dev/null 2> err
rc=$?
is "$rc" 12 "rerun with -U: status 12 (the network disk and the damage)"
is "$(q '[.disks[] | select(.sha256) | "\(.domain)/\(.target)\(if .snapshot then "@"+.snapshot else "" end)=\(.status)"] | join(" ")')" \
   "vm-bad/vda=complete-earlier vm-busy/vda=complete vm-chain/vda=complete vm-clean/vda=complete-earlier vm-clean/vdb=complete-earlier vm-snap/vda=complete-earlier vm-snap/vda@s1=complete-earlier" \
   "rerun: complete disks skipped, the truncated and the busy one exported"
ok "... the truncated one is whole again" cmp -s out/vm-chain/vda.raw ref/top.raw
ok "... the busy one (in use, -U) is qemu-img's" \
  eval "cmp -s out/vm-busy/vda.raw ref/busy.raw && [ \"\$(q '.disks[] | select(.domain==\"vm-busy\") | .[\"in-use\"]')\" = true ]"
is "$(q '.disks[] | select(.domain=="vm-bad") | .unreadable | length')" 4 \
   "... a skipped disk keeps its unreadable ranges"
stop_holder

# ---- one domain, human output ----
qcowkit rescue --sysroot "$S" --domain vm-chain --to one > one.txt 2> err
rc=$?
ok "--domain: only that domain (status 0, human manifest on stdout)" \
  eval "[ $rc = 0 ] && cmp -s one.txt one/MANIFEST.txt && grep -q '^vm-chain vda: complete' one.txt && ! grep -q vm-clean one.txt"
qcowkit rescue --sysroot "$S" --domain nosuch --to one > /dev/null 2>&1
is "$?" 1 "an unknown --domain is an error"

# ---- --image, and --libvirt-root ----
qcowkit rescue --image "$S$I/top.qcow2" --to img > /dev/null 2> err
rc=$?
ok "--image: one image (its backing file by the path it names: not found)" \
  eval "[ $rc = 1 ] && jq -e '.disks[0].status == \"failed\"' img/manifest.json > /dev/null"
qcowkit rescue --image "$S$I/clean.qcow2" --image "$S$I/snap.qcow2" \
  --snapshots --to img > /dev/null 2> err
rc=$?
ok "--image with --snapshots: qemu-img's bytes, status 0" \
  eval "[ $rc = 0 ] && cmp -s img/clean.qcow2.raw ref/clean.raw && cmp -s img/snap.qcow2@s1.raw ref/snap@s1.raw"
mkdir -p lr/etc/qemu
qcowkit rescue --libvirt-root lr --to lr/etc/out > /dev/null 2> err
rc=$?
ok "--to inside the libvirt root is refused" \
  eval "[ $rc = 1 ] && grep -q 'inside the libvirt root' err"

sums > sums.after
ok "the sources are unchanged" cmp -s sums.before sums.after

done_testing
