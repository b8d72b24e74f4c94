#!/bin/bash
# Make the seed corpora of the fuzz harnesses:
#
#   fuzz/make-seeds.sh SRCDIR OUTDIR
#
# OUTDIR/qcow2/      images with every feature, and damaged variants
#                    (fuzz-image, fuzz-read, fuzz-check; needs qemu-img,
#                    qemu-io)
# OUTDIR/chain/      fake file systems for fuzz-chain (fuzz/chainfs.h):
#                    relative, climbing and absolute names, raw bases, a
#                    chain deeper than the harness's limit, loops, json: and
#                    protocol names, missing files, an external data file
#                    (needs qemu-img, qemu-io)
# OUTDIR/meta-file/  libvirt's snapshot and checkpoint XML fixtures
#                    (SRCDIR/tests/corpus/libvirt) and a few documents
#                    written here (fuzz-meta-file)
# OUTDIR/meta-bulk/  bulk files (<snapshots current=...>, <checkpoints>),
#                    each with a leading byte that chooses how the reader's
#                    reads are cut (fuzz-meta-bulk)
#
# OUTDIR/qcow2/gen-* images of `qcowkit fuzz-corpus` ($QCOWKIT, or qcowkit
#                    on PATH), when there is one
# OUTDIR/qcow2-large/ the images above 256 KiB: 64 KiB and 2 MiB clusters
#                    (replayed by tests/fuzz-replay.sh; a fuzzing session
#                    that wants them adds the directory and -max_len)
#
# The seeds of qcow2/ are small (1 MiB virtual disks at most, 512 B to
# 16 KiB clusters, 7 to 180 KiB each): a harness's time per input grows
# with the input, and the features are the same in a small image
# (doc/FUZZING.md, "Throughput"); fuzz/smoke.sh runs with -max_len=262144.
#
# Used by tests/fuzz-replay.sh and fuzz/smoke.sh. Without qemu-img the
# chain directory stays empty, and qcow2/ holds only the gen-* images.
set -e
srcdir=${1:?usage: make-seeds.sh SRCDIR OUTDIR}
out=${2:?usage: make-seeds.sh SRCDIR OUTDIR}
mkdir -p "$out/qcow2" "$out/qcow2-large" "$out/chain" "$out/meta-file" \
  "$out/meta-bulk"
out=$(cd "$out" && pwd)
# qcow2/ images above 256 KiB go to qcow2-large/ (smoke.sh's -max_len)
apart () {
  for f in "$out"/qcow2/*; do
    [ ! -f "$f" ] || [ "$(wc -c < "$f")" -le 262144 ] ||
      mv "$f" "$out/qcow2-large/"
  done
}

# ---- libvirt XML ----
i=0
for f in "$srcdir"/tests/corpus/libvirt/*/*.xml; do
  i=$((i + 1))
  cp "$f" "$out/meta-file/libvirt$i-$(basename "$f")"
done

snap () {  # NAME PARENT ACTIVE [STATE]: a per-file snapshot document
  printf '<domainsnapshot>\n  <name>%s</name>\n' "$1"
  [ -n "$2" ] && printf '  <parent>\n    <name>%s</name>\n  </parent>\n' "$2"
  printf '  <state>%s</state>\n  <creationTime>%s</creationTime>\n' \
    "${4:-shutoff}" "$((1700000000 + ${#1}))"
  printf '  <memory snapshot='"'"'no'"'"'/>\n  <disks>\n'
  printf '    <disk name='"'"'vda'"'"' snapshot='"'"'internal'"'"'/>\n'
  printf '    <disk name='"'"'vdb'"'"' snapshot='"'"'external'"'"' type='"'"'file'"'"'>\n'
  printf '      <driver type='"'"'qcow2'"'"'/>\n      <source file='"'"'/vm/%s.qcow2'"'"'/>\n    </disk>\n' "$1"
  printf '  </disks>\n  <domain type='"'"'kvm'"'"'>\n    <name>vm</name>\n'
  printf '    <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n  </domain>\n'
  [ -n "$3" ] && printf '  <active>%s</active>\n' "$3"
  printf '</domainsnapshot>\n'
}
ckpt () {  # NAME PARENT
  printf '<domaincheckpoint>\n  <name>%s</name>\n' "$1"
  [ -n "$2" ] && printf '  <parent>\n    <name>%s</name>\n  </parent>\n' "$2"
  printf '  <creationTime>%s</creationTime>\n  <disks>\n' "$((1700000000 + ${#1}))"
  printf '    <disk name='"'"'vda'"'"' checkpoint='"'"'bitmap'"'"' bitmap='"'"'%s'"'"'/>\n' "$1"
  printf '    <disk name='"'"'vdb'"'"' checkpoint='"'"'no'"'"'/>\n  </disks>\n</domaincheckpoint>\n'
}
snap s1 "" 0 > "$out/meta-file/gen-s1.xml"
snap s2 s1 1 running > "$out/meta-file/gen-s2.xml"
snap s3 s3 1 disk-snapshot > "$out/meta-file/gen-self-parent.xml"
ckpt c1 "" > "$out/meta-file/gen-c1.xml"
ckpt c2 c1 > "$out/meta-file/gen-c2.xml"
cat > "$out/meta-file/gen-domain.xml" <<'EOF'
<domain type='kvm'>
  <name>vm</name>
  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vm/top.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/sdb'/>
      <target dev='vdb'/>
    </disk>
  </devices>
</domain>
EOF

# bulk files: CONTROL-BYTE then the file
bulk () {  # OUT CONTROL ROOT-START-TAG ROOT-NAME DOC...
  o=$1 c=$2 start=$3 root=$4
  shift 4
  { printf "$c"; printf '%s\n' "$start"; cat "$@"; printf '</%s>\n' "$root"; } > "$o"
}
t=$out/.tmp
mkdir -p "$t"
snap s1 "" "" > "$t/s1"; snap s2 s1 "" running > "$t/s2"
snap s3 s2 "" > "$t/s3"; snap s4 s1 "" paused > "$t/s4"
ckpt c1 "" > "$t/c1"; ckpt c2 c1 > "$t/c2"; ckpt c3 c2 > "$t/c3"
bulk "$out/meta-bulk/snapshots-whole.xml" '\xff' "<snapshots current='s3'>" \
  snapshots "$t/s1" "$t/s2" "$t/s3" "$t/s4"
bulk "$out/meta-bulk/snapshots-bytes.xml" '\x00' "<snapshots current='s2'>" \
  snapshots "$t/s1" "$t/s2" "$t/s3"
bulk "$out/meta-bulk/snapshots-small.xml" '\x13' "<snapshots current='s4'>" \
  snapshots "$t/s1" "$t/s2" "$t/s4"
bulk "$out/meta-bulk/snapshots-mid.xml" '\x76' "<snapshots>" \
  snapshots "$t/s1" "$t/s1" "$t/s3"
bulk "$out/meta-bulk/snapshots-empty.xml" '\x25' "<snapshots current='x'>" \
  snapshots
bulk "$out/meta-bulk/checkpoints-whole.xml" '\xff' "<checkpoints>" \
  checkpoints "$t/c1" "$t/c2" "$t/c3"
bulk "$out/meta-bulk/checkpoints-cut.xml" '\x34' "<checkpoints current='c2'>" \
  checkpoints "$t/c1" "$t/c2" "$t/c3"
# libvirt's own documents in one bulk file (their XML declarations out)
set -- "$srcdir"/tests/corpus/libvirt/*snapshotxml2xmlout/*.xml
{ printf '\x0a'; printf '<snapshots current='"'"'1525889631'"'"'>\n'
  for f in "$@"; do grep -v '^<?xml' "$f"; done
  printf '</snapshots>\n'; } > "$out/meta-bulk/libvirt-snapshots.xml"
set -- "$srcdir"/tests/corpus/libvirt/qemudomaincheckpointxml2xmlout/*.xml
{ printf '\x58'; printf '<checkpoints>\n'
  for f in "$@"; do grep -v '^<?xml' "$f"; done
  printf '</checkpoints>\n'; } > "$out/meta-bulk/libvirt-checkpoints.xml"
rm -rf "$t"

# ---- qcow2 images from qcowkit's own builder (qcowkit fuzz-corpus) ----
qk=${QCOWKIT:-$(command -v qcowkit 2>/dev/null || true)}
if [ -n "$qk" ] && [ -x "$qk" ]; then
  "$qk" fuzz-corpus --quiet "$out/.gen" >/dev/null
  for f in "$out"/.gen/*; do
    case $f in *.qcow2) cp "$f" "$out/qcow2/gen-$(basename "$f")" ;; esac
  done
  rm -rf "$out/.gen"
  apart
fi

# ---- qcow2 images and chains (qemu-img) ----
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
  echo "make-seeds.sh: no qemu-img/qemu-io: no qcow2 or chain seeds" >&2
  exit 0
fi
c=$out/qcow2
i=0
# 1 MiB disks; each gets data, a zero run and a compressed cluster (whole
# clusters, 4 KiB at least), at 0, 256 KiB and 512 KiB
mk () {  # CLUSTER-SIZE OPTIONS
  i=$((i + 1))
  qemu-img create -q -f qcow2 -o "cluster_size=$1${2:+,$2}" "$c/seed$i.qcow2" 1M
  n=$(( $1 > 4096 ? $1 : 4096 ))
  qemu-io -f qcow2 -c "write -P 1 0 $n" -c "write -z 256k $n" \
    -c "write -c -P 2 512k $n" "$c/seed$i.qcow2" >/dev/null 2>&1
}
mk 512
mk 65536 refcount_bits=1
mk 4096 compat=0.10
mk 16384 extended_l2=on
mk 4096 compression_type=zstd
mk 4096 lazy_refcounts=on
mk 4096 refcount_bits=64
mk 4096 refcount_bits=1     # seed2's features in 4 KiB clusters (seed2 is large)
qemu-img snapshot -c s1 "$c/seed1.qcow2"
qemu-io -f qcow2 -c 'write -P 3 32k 8k' "$c/seed1.qcow2" >/dev/null 2>&1
qemu-img snapshot -c s2 "$c/seed1.qcow2"
qemu-img bitmap --add "$c/seed2.qcow2" b0
qemu-img bitmap --add "$c/seed8.qcow2" b0
qemu-img bitmap --add "$c/seed4.qcow2" b1
qemu-io -f qcow2 -c 'write -P 4 8k 4k' "$c/seed4.qcow2" >/dev/null 2>&1
# damaged variants: flip bytes across the first clusters (of the
# extended L2 image, 180 KiB, only the feature bits and the header length)
damage () {  # IMAGE OFFSET...
  f=$1; shift
  for off in "$@"; do
    [ "$off" -lt "$(wc -c < "$f")" ] || continue
    cp "$f" "$f.d$off"
    printf '\xff\xff' | dd of="$f.d$off" bs=1 seek=$off conv=notrunc status=none
  done
}
damage "$c/seed1.qcow2" 40 48 64 72 104 4096 65536
damage "$c/seed7.qcow2" 40 48 64 72 104 4096 16384
damage "$c/seed4.qcow2" 72 104

apart
# chains: small images (512-byte clusters), packed as fuzz/chainfs.h says
w=$out/.chain
mkdir -p "$w/vm" "$w/other"
pack () {  # OUT NAME FILE [NAME FILE]...
  _o=$1; shift
  : > "$_o"
  _first=1
  while [ $# -gt 0 ]; do
    [ $_first = 1 ] || printf '\n#QKFILE#\n' >> "$_o"
    printf '%s\n' "$1" >> "$_o"
    cat "$2" >> "$_o"
    shift 2
    _first=0
  done
}
q () { qemu-img create -q -f qcow2 -o cluster_size=512 "$@"; }
fill () { qemu-io -f qcow2 -c "write -P $2 $3 4k" "$1" >/dev/null 2>&1; }
(
  cd "$w/vm"
  q base.qcow2 1M; fill base.qcow2 1 0
  head -c 65536 /dev/zero | tr '\0' '\7' > base.raw
  q -b base.qcow2 -F qcow2 mid.qcow2 1M; fill mid.qcow2 2 4096
  q -b mid.qcow2 -F qcow2 top.qcow2 1M; fill top.qcow2 3 8192
  q -b base.raw -F raw onraw.qcow2 1M; fill onraw.qcow2 4 0
  # no backing format extension (its magic made unknown): probed
  q -b base.raw -F raw onraw-probed.qcow2 1M
  at=$(LC_ALL=C grep -obUaP '\xe2\x79\x2a\xca' onraw-probed.qcow2 | head -1 | cut -d: -f1)
  [ -z "$at" ] ||
    printf '\x12\x34\x56\x78' | dd of=onraw-probed.qcow2 bs=1 seek="$at" conv=notrunc status=none
  q -u -b ../other/far.qcow2 -F qcow2 climb.qcow2 1M
  q -u -b /vm/base.qcow2 -F qcow2 absolute.qcow2 1M
  q -u -b 'json:{"file":{"driver":"file","filename":"base.qcow2"}}' -F qcow2 json.qcow2 1M
  q -u -b 'nbd://localhost/base' -F raw nbd.qcow2 1M
  q -u -b missing.qcow2 -F qcow2 nobacking.qcow2 1M
  q -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2 1M
  q -u -b ./loop-a.qcow2 -F qcow2 loop-b.qcow2 1M
  q -u -b ./self.qcow2 -F qcow2 self.qcow2 1M
  q -u -b base.qcow2 -F vmdk badfmt.qcow2 1M
  q -o data_file=data.raw,data_file_raw=on datafile.qcow2 64K
  qemu-io -f qcow2 -c 'write -P 5 0 4k' datafile.qcow2 >/dev/null 2>&1
  q deep0.qcow2 1M; fill deep0.qcow2 1 0
  for d in 1 2 3 4 5 6 7 8 9 10; do
    q -b deep$((d - 1)).qcow2 -F qcow2 deep$d.qcow2 1M
  done
)
(cd "$w/other" && q -b ../vm/base.qcow2 -F qcow2 far.qcow2 1M && fill far.qcow2 6 0)
v=$w/vm
pack "$out/chain/three.chain" vm/top.qcow2 "$v/top.qcow2" \
  vm/mid.qcow2 "$v/mid.qcow2" vm/base.qcow2 "$v/base.qcow2"
pack "$out/chain/raw-base.chain" vm/onraw.qcow2 "$v/onraw.qcow2" \
  vm/base.raw "$v/base.raw"
pack "$out/chain/raw-probed.chain" vm/onraw-probed.qcow2 \
  "$v/onraw-probed.qcow2" vm/base.raw "$v/base.raw"
pack "$out/chain/climb.chain" vm/climb.qcow2 "$v/climb.qcow2" \
  other/far.qcow2 "$w/other/far.qcow2" vm/base.qcow2 "$v/base.qcow2"
pack "$out/chain/absolute.chain" vm/absolute.qcow2 "$v/absolute.qcow2" \
  /vm/base.qcow2 "$v/base.qcow2"
pack "$out/chain/json.chain" vm/json.qcow2 "$v/json.qcow2" \
  vm/base.qcow2 "$v/base.qcow2"
pack "$out/chain/nbd.chain" vm/nbd.qcow2 "$v/nbd.qcow2" vm/base.raw "$v/base.raw"
pack "$out/chain/missing.chain" vm/nobacking.qcow2 "$v/nobacking.qcow2"
pack "$out/chain/loop.chain" vm/loop-a.qcow2 "$v/loop-a.qcow2" \
  vm/loop-b.qcow2 "$v/loop-b.qcow2"
pack "$out/chain/self.chain" vm/self.qcow2 "$v/self.qcow2"
pack "$out/chain/badfmt.chain" vm/badfmt.qcow2 "$v/badfmt.qcow2" \
  vm/base.qcow2 "$v/base.qcow2"
pack "$out/chain/datafile.chain" vm/datafile.qcow2 "$v/datafile.qcow2" \
  vm/data.raw "$v/data.raw"
set --
for d in 10 9 8 7 6 5 4 3 2 1 0; do set -- "$@" "vm/deep$d.qcow2" "$v/deep$d.qcow2"; done
pack "$out/chain/deep.chain" "$@"
# a bare image as the top (no name line), its backing next to it
cp "$v/top.qcow2" "$w/bare"
printf '\n#QKFILE#\nvm/mid.qcow2\n' >> "$w/bare"
cat "$v/mid.qcow2" >> "$w/bare"
mv "$w/bare" "$out/chain/bare-top.chain"
rm -rf "$w"
