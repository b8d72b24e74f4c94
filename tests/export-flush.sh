#!/bin/bash
# qcowkit export's output file: the same bytes as `qemu-img convert -O raw`
# (cmp) whether it flushes or not (--no-flush) and whether the kernel
# copies the data clusters (copy_file_range, the default into a regular
# file) or we do (QCOWKIT_COPY_RANGE=0), over data, zlib, zstd, zero and
# unallocated clusters, backing files (qcow2 and raw), a data cluster
# past the end of its file; an existing output, longer or shorter, ends up
# exactly the virtual size; copy_file_range is used where it may be, and
# only there. No timings here: those are `make bench` (tests/bench/).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
# run directly (srcdir=. bash tests/export-flush.sh): the tools built here
command -v qcowkit >/dev/null 2>&1 ||
  PATH=$(cd "${top_builddir:-$srcdir}" && pwd)/tools:$PATH
require qemu-img qemu-io qcowkit
scratch
cd "$T" || exit 1

# cmp_files DESC A B: identical files, with the first difference on failure
cmp_files () {
  if cmp -s "$2" "$3"; then
    pass "$1"
  else
    fail "$1" "$(cmp "$2" "$3" 2>&1 | head -1)" \
      "sizes: $(stat -c %s "$2") $(stat -c %s "$3")"
  fi
}

# ---- the images ----
# data: uncompressed data clusters (one of them all zeros, which qemu-img
# leaves as a hole), zero clusters, a partly written cluster, unallocated
# clusters; 64 KiB clusters and a size that is not a multiple of them
qemu-img create -q -f qcow2 data.qcow2 $((8 * 1048576 + 12345))
qio -c 'write -P 0x11 0 1M' -c 'write -P 0 1M 128k' -c 'write -z 2M 128k' \
  -c 'write -P 0x22 3M 4k' -c 'write -P 0x33 5M 1M' -c 'write -z 5200k 64k' \
  data.qcow2
# compressed images: every data cluster compressed (convert -c), then
# uncompressed writes and zero clusters over them
for c in zlib zstd; do
  qemu-img convert -q -c -O qcow2 -o compression_type=$c data.qcow2 $c-only.qcow2
  cp $c-only.qcow2 $c.qcow2
  qio -c 'write -P 0x44 4M 192k' -c 'write -z 320k 64k' -c 'discard 5M 64k' \
    $c.qcow2
done
# a qcow2 backing file, and a raw one shorter than its overlay (QEMU
# rounds its size up to whole sectors)
qemu-img create -q -f qcow2 -b data.qcow2 -F qcow2 -o cluster_size=4k \
  top.qcow2 $((8 * 1048576 + 12345))
qio -c 'write -P 0x55 100k 8k' -c 'write -z 1040k 8k' -c 'write -P 0x66 7M 64k' \
  top.qcow2
head -c 3M /dev/zero | tr '\0' '\167' > base.raw
truncate -s 3100000 base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw rawtop.qcow2 5M
qio -c 'write -P 0x77 1M 64k' -c 'write -z 2M 64k' rawtop.qcow2
# the last data cluster half past the end of the image file: reads as zeros
qemu-img create -q -f qcow2 short.qcow2 4M
qio -c 'write -P 0x88 0 256k' short.qcow2
truncate -s $(( $(stat -c %s short.qcow2) - 32768 )) short.qcow2
images="data.qcow2 zlib.qcow2 zstd.qcow2 zlib-only.qcow2 zstd-only.qcow2
        top.qcow2 rawtop.qcow2 short.qcow2"
sync

# ---- the same bytes as qemu-img, every way ----
for i in $images; do
  rm -f "$i.ref"
  qemu-img convert -O raw "$i" "$i.ref" 2> q.err ||
    { fail "$i: qemu-img convert failed" "$(cat q.err)"; continue; }
  for flush in "" --no-flush; do
    for cr in 1 0; do
      what="$i: export ${flush:-(flushed)}$([ $cr = 0 ] && echo ', QCOWKIT_COPY_RANGE=0')"
      rm -f o.raw
      QCOWKIT_COPY_RANGE=$cr qcowkit export $flush "$i" o.raw 2> o.err
      is "$?" 0 "$what exits 0"
      [ -s o.err ] && diag "stderr: $(cat o.err)"
      cmp_files "$what equals qemu-img convert -O raw" "$i.ref" o.raw
    done
  done
done

# ---- an existing output is replaced, whatever its size ----
i=zstd.qcow2
size=$(stat -c %s "$i.ref")
for flush in "" --no-flush; do
  for len in $((3 * size)) 1048576 0; do
    head -c "$len" /dev/zero | tr '\0' '\377' > o.raw
    qcowkit export $flush "$i" o.raw
    is "$(stat -c %s o.raw)" "$size" \
      "$i: export ${flush:-(flushed)} over a $len-byte file: the virtual size"
    cmp_files "$i: export ${flush:-(flushed)} over a $len-byte file equals qemu-img" \
      "$i.ref" o.raw
  done
done
# the same with the kernel copying data clusters
i=data.qcow2
head -c $((3 * size)) /dev/zero | tr '\0' '\377' > o.raw
qcowkit export "$i" o.raw
cmp_files "$i: export over a longer file of 0xff equals qemu-img" "$i.ref" o.raw

# ---- where copy_file_range is used ----
# (tried: whether the file system can is the kernel's business, and a
# failure falls back to reads and writes)
if have strace "copy_file_range calls"; then
  n () {  # n IMAGE [ENV...]: copy_file_range calls exporting IMAGE
    local i=$1; shift
    rm -f o.raw st
    traced_env env "$@" strace -f -qq --seccomp-bpf -e trace=copy_file_range -o st \
      qcowkit export -q "$i" o.raw
    grep -cE '^[0-9]+ +copy_file_range\(' st
  }
  ok "data.qcow2: data clusters are copied with copy_file_range" \
    test "$(n data.qcow2)" -gt 0
  is "$(n data.qcow2 QCOWKIT_COPY_RANGE=0)" 0 \
    "data.qcow2: QCOWKIT_COPY_RANGE=0: no copy_file_range"
  is "$(n zlib-only.qcow2)" 0 "zlib-only.qcow2: compressed clusters are not copied"
  is "$(n zstd-only.qcow2)" 0 "zstd-only.qcow2: compressed clusters are not copied"
  ok "rawtop.qcow2: the raw backing file's data is copied too" \
    test "$(n rawtop.qcow2)" -gt 0
  # a pipe gets every byte in order, from our reads
  rm -f st
  traced_env strace -f -qq --seccomp-bpf -e trace=copy_file_range -o st \
    qcowkit export -q data.qcow2 /dev/stdout | cat > o.raw
  is "$(grep -cE '^[0-9]+ +copy_file_range\(' st)" 0 \
    "data.qcow2 to a pipe: no copy_file_range"
  cmp_files "data.qcow2 to a pipe equals qemu-img" data.qcow2.ref o.raw

  # --root: backing files were opened beneath the root by the library;
  # export does not open them again by name (that would not be confined)
  rm -f o.raw st
  traced_env strace -f -qq --seccomp-bpf -e trace=open,openat,openat2 -o st \
    qcowkit export -q --root "$T" "$T/top.qcow2" o.raw
  cmp_files "top.qcow2 --root: equals qemu-img" top.qcow2.ref o.raw
  is "$(grep -c "\"$T/data.qcow2\"" st)" 0 \
    "top.qcow2 --root: the backing file is not reopened by name"
  rm -f o.raw st
  traced_env strace -f -qq --seccomp-bpf -e trace=open,openat,openat2 -o st \
    qcowkit export -q "$T/top.qcow2" o.raw
  ok "top.qcow2 without --root: the backing file's data is copied from a second descriptor" \
    test "$(grep -c "\"$T/data.qcow2\"" st)" -ge 2
fi

done_testing
