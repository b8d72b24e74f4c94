#!/bin/bash
# Replay the seed corpora (fuzz/make-seeds.sh: qcow2 images qemu-img makes
# now with every feature, fake file systems of backing chains, libvirt's
# XML fixtures and bulk files) and tests/regress/ through every fuzz
# harness's replay build.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io
scratch
s=$T/seeds
if ! out=$(bash "$srcdir/fuzz/make-seeds.sh" "$srcdir" "$s" 2>&1); then
  fail "fuzz/make-seeds.sh makes the seed corpora" "$out"
  done_testing
  exit
fi
for d in qcow2 chain meta-file meta-bulk; do
  n=$(ls "$s/$d" | wc -l)
  ok "seeds for $d ($n)" test "$n" -gt 5
done

replay () {  # HARNESS DIR...
  h=$1; shift
  out=$(timeout 300 "$top_builddir/fuzz/fuzz-$h-replay" "$@" "$srcdir/tests/regress" 2>&1)
  rc=$?
  is "$rc" 0 "fuzz-$h replays $(echo "$out" | sed -n 's/.*replayed \([0-9]*\) inputs/\1/p' | tail -1) inputs (seeds and tests/regress) without a crash"
  [ $rc -eq 0 ] || diag "$(echo "$out" | tail -5)"
}
replay image "$s/qcow2"
replay read "$s/qcow2"
replay check "$s/qcow2"
replay chain "$s/chain" "$s/qcow2"
replay meta-file "$s/meta-file"
replay meta-bulk "$s/meta-bulk"
done_testing
