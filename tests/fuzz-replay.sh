#!/bin/bash
# Replay a seed corpus (small images qemu-img makes now, with every
# feature) and tests/regress/ through every fuzz harness's replay build.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io
scratch
c=$T/corpus
mkdir -p "$c"
i=0
mk () { i=$((i + 1)); qemu-img create -q -f qcow2 "$@" "$c/seed$i.qcow2" 4M; }
mk -o cluster_size=512
mk -o cluster_size=65536,refcount_bits=1
mk -o compat=0.10
mk -o extended_l2=on,cluster_size=16384
mk -o compression_type=zstd
mk -o lazy_refcounts=on
for f in "$c"/seed*.qcow2; do
  qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -z 1M 64k' -c 'write -c -P 2 2M 64k' "$f" >/dev/null 2>&1
done
qemu-img snapshot -c s1 "$c/seed1.qcow2"
qemu-img bitmap --add "$c/seed2.qcow2" b0
# damaged variants: flip bytes across the first clusters
for f in "$c"/seed1.qcow2 "$c"/seed4.qcow2; do
  for off in 40 48 64 72 104 4096 65536; do
    cp "$f" "$f.d$off"
    printf '\xff\xff' | dd of="$f.d$off" bs=1 seek=$off conv=notrunc status=none
  done
done
n=$(ls "$c" | wc -l)
for h in image read check; do
  out=$(timeout 300 "$top_builddir/fuzz/fuzz-$h-replay" "$c" "$srcdir/tests/regress" 2>&1)
  rc=$?
  is "$rc" 0 "fuzz-$h replays $n seeds and tests/regress without a crash"
  [ $rc -eq 0 ] || diag "$(echo "$out" | tail -5)"
done
done_testing
