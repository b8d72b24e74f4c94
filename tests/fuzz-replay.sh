#!/bin/bash
# Replay the seed corpora (fuzz/make-seeds.sh: qcow2 images qemu-img makes
# now with every feature, fake file systems of backing chains, libvirt's
# XML fixtures and bulk files) and tests/regress/ through every fuzz
# harness's replay build (fuzz-amend over the catalog's images and
# qcowkit's corpus too). fuzz-repair also replays a damaged image for
# each fix the repair makes (cases of the check catalog, tests/check/,
# built here), and each input of tests/regress/ it still stops on (a
# library bug it found, not fixed yet: repair_todo below) as a TODO line.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io qkpoke
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
# qcow2-large/: the 64 KiB and 2 MiB cluster images the fuzzing seeds
# leave out (fuzz/make-seeds.sh), replayed here as before
replay image "$s/qcow2" "$s/qcow2-large"
replay read "$s/qcow2" "$s/qcow2-large"
replay check "$s/qcow2" "$s/qcow2-large"
replay chain "$s/chain" "$s/qcow2" "$s/qcow2-large"
replay meta-file "$s/meta-file"
replay meta-bulk "$s/meta-bulk"

# ---- fuzz-repair ----
# Cases of the check catalog whose images the repair fixes, at least one
# per fix (fixes.def): what the seeds above, undamaged or with bytes
# flipped in the header, rarely reach.
repair_cases="bitmap-in-use copied-compressed copied-l1-set-shared
  copied-l2-clear corrupt-bit dirty-and-corrupt-bits dirty-lazy-refcounts-leaks
  l1-entry-past-eof l1-reserved-bits l2-data-unaligned l2-prealloc-zero-unaligned
  l2-reserved-bits leak-l2-entry-cleared overlap-l2-entry-to-l1
  overlap-l2-entry-to-refblock past-eof-l2-entry refblock-outside-image
  refcount-low-duplicate-l2-entry refcount-zero-l2-table reftable-entry-zeroed
  sn-extra-size-field sn-extra-too-big sn-many-empty-entries sn-table-past-eof
  sn-too-many subcluster-compressed-bitmap"
# Inputs of tests/regress/ that fuzz-repair still stops on: library bugs it
# found, not fixed yet. Each is replayed alone on a TODO line (an expected
# failure, with the harness's last words); once the library is fixed the
# line passes, automake reports an unexpected pass (XPASS), and the entry
# goes.
declare -A repair_todo=()
cat_dir=$(cd "$srcdir/tests/check" && pwd)
mkdir -p "$T/repair"
built=0 bad=
for c in $repair_cases; do
  mkdir -p "$T/case/$c"
  if [ -f "$cat_dir/$c/script" ] &&
     (cd "$T/case/$c" && IMG=$T/repair/$c.qcow2 bash -ec '. "$1"; . "$2"' \
        script "$cat_dir/functions.sh" "$cat_dir/$c/script") >/dev/null 2>&1 &&
     [ -f "$T/repair/$c.qcow2" ]; then
    built=$((built + 1))
  else
    bad="$bad $c"
  fi
done
is "${bad:-none}" none "the check catalog builds the $built images fuzz-repair replays"
regress=()
for f in "$srcdir"/tests/regress/*; do
  [ -n "${repair_todo[$(basename "$f")]:-}" ] || regress+=("$f")
done
out=$(timeout 300 "$top_builddir/fuzz/fuzz-repair-replay" "$s/qcow2" "$s/qcow2-large" "$T/repair" \
        "${regress[@]}" 2>&1)
rc=$?
is "$rc" 0 "fuzz-repair replays $(echo "$out" | sed -n 's/.*replayed \([0-9]*\) inputs/\1/p' | tail -1) inputs (seeds, the catalog's images, tests/regress less ${#repair_todo[@]} known) without a finding"
[ $rc -eq 0 ] || diag "$(echo "$out" | tail -5)"
for k in "${!repair_todo[@]}"; do
  out=$(timeout 300 "$top_builddir/fuzz/fuzz-repair-replay" "$srcdir/tests/regress/$k" 2>&1)
  rc=$?
  tap_n=$((tap_n + 1))
  if [ $rc -eq 0 ]; then
    echo "ok $tap_n - fuzz-repair replays tests/regress/$k without a finding # TODO ${repair_todo[$k]}"
  else
    echo "not ok $tap_n - fuzz-repair replays tests/regress/$k without a finding # TODO ${repair_todo[$k]}"
    diag "$(echo "$out" | grep '^fuzz-repair:' | head -1)"
  fi
done

# Under the bounds (QK_FUZZ_BOUNDS=on, as in every libFuzzer session) a
# repair grows the file to 16 MiB at most (fuzz.h, fuzz_file_cap): the
# write past it fails with EFBIG, as on a full disk, and the harness goes
# on to the next input. This input's repair puts fresh clusters past a
# dangling reference 800 MiB out: bounded, its write there fails;
# unbounded (the replay's default), every write succeeds.
if have strace "fuzz-repair's file cap, seen in its writes"; then
  zcat "$srcdir/tests/regress/repair-compressed-bitmap-under-l2-table.gz" \
    > "$T/cap.in"
  for b in on off; do
    out=$(QK_FUZZ_BOUNDS=$b traced_env timeout 300 strace -f -e trace=pwrite64 \
            -e signal=none -o "$T/cap-$b.st" \
            "$top_builddir/fuzz/fuzz-repair-replay" "$T/cap.in" 2>&1)
    is "$?" 0 "fuzz-repair with QK_FUZZ_BOUNDS=$b replays an input whose repair writes 800 MiB out"
    [ -z "$out" ] || diag "$(echo "$out" | tail -3)"
  done
  n_on=$(grep -c 'EFBIG' "$T/cap-on.st")
  n_off=$(grep -c 'EFBIG' "$T/cap-off.st")
  last_on=$(grep -o 'pwrite64([0-9]*, .*, [0-9]*) = -1 EFBIG' "$T/cap-on.st" \
              | head -1 | sed 's/.*, \([0-9]*\)) = .*/\1/')
  ok "bounded: the write past 16 MiB (at ${last_on:-none}) failed with EFBIG" \
    test "$n_on" -ge 1 -a "${last_on:-0}" -gt $((16 << 20))
  ok "unbounded: no write failed ($n_off EFBIG), the repair went past 16 MiB" \
    test "$n_off" -eq 0 -a "$(grep -cE 'pwrite64\([0-9]+, .*, [0-9]{9,}\) = [0-9]+$' "$T/cap-off.st")" -gt 0
fi

# ---- fuzz-amend ----
# The seeds, the catalog's damaged images (amend must refuse them without
# writing, or leave them no worse), qcowkit's own corpus (version 2
# snapshots without extra data, a dirty image, every refcount width) and
# tests/regress.
mkdir -p "$T/fc"
"$top_builddir/tools/qcowkit" fuzz-corpus "$T/fc" > /dev/null 2>&1
out=$(timeout 300 "$top_builddir/fuzz/fuzz-amend-replay" "$s/qcow2" "$s/qcow2-large" "$T/repair" \
        "$T/fc" "$srcdir/tests/regress" 2>&1)
rc=$?
is "$rc" 0 "fuzz-amend replays $(echo "$out" | sed -n 's/.*replayed \([0-9]*\) inputs/\1/p' | tail -1) inputs (seeds, the catalog's images, qcowkit's corpus, tests/regress) without a finding"
[ $rc -eq 0 ] || diag "$(echo "$out" | grep '^fuzz-amend:' | head -3)"
done_testing
