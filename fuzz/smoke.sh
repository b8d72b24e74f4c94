#!/bin/bash
# A short, bounded libFuzzer session for every harness, from the seed
# corpora (fuzz/make-seeds.sh), as CI runs it:
#
#   fuzz/smoke.sh [SECONDS [HARNESS...]]   (from a --enable-fuzzing build)
#
# Each harness runs SECONDS (default 60) under ASan + UBSan with its
# dictionary, a 2 GiB RSS limit, a 10 s per-input timeout, inputs of at
# most 256 KiB (-max_len; 64 KiB for repair and amend, max_len below; the
# qcow2 seeds are smaller, fuzz/make-seeds.sh)
# and no rereading of the corpus directory (-reload=0: one process).
# Any crash, leak, timeout or out-of-memory fails the script; the input
# that did it is left in smoke/artifacts/. Exiting cleanly is not enough:
# a session must also run at least min_rate inputs a second (libFuzzer's
# "Done N runs"; below), and the coverage must grow past what the seed
# corpus reached (the cov: of the INITED line against the last one), so
# that a harness that rejects every input fails. Three TAP lines per
# harness.
set -u
# Inputs a second a session must reach: about a third of what one
# session ran on a loaded 2-core machine (doc/FUZZING.md, "Throughput").
# fuzz-meta-bulk cuts each input into many small reads (fuzz-meta-bulk.c)
# and ran 18 a second in a CI run whose machine had other work; 42 alone.
min_rate () {
  case $1 in
    image|read|check|chain) echo 150 ;;
    repair|amend) echo 25 ;;
    meta-bulk) echo 10 ;;
    *) echo 20 ;;
  esac
}
# The largest input libFuzzer makes: the repair and the amend write the
# input to a file and check it whole three to six times, so every byte
# costs them several times what it costs the others (doc/FUZZING.md,
# "Throughput"). The qcow2 seeds are 18 to 33 KiB but for seed4's three
# (180 KiB), which libFuzzer cuts to 64 KiB for them: a long campaign on
# fuzz-repair passes -max_len=262144 to reach their paths too.
max_len () {
  case $1 in
    repair|amend) echo 65536 ;;
    *) echo 262144 ;;
  esac
}
secs=${1:-60}
[ $# -gt 0 ] && shift
only=" $* "
here=$(cd "$(dirname "$0")" && pwd)
srcdir=${srcdir:-$(dirname "$here")}
build=${top_builddir:-.}
work=${SMOKE_DIR:-$build/smoke}
rm -rf "$work"
mkdir -p "$work/artifacts"
[ -x "$build/tools/qcowkit" ] && export QCOWKIT=$build/tools/qcowkit
if ! bash "$srcdir/fuzz/make-seeds.sh" "$srcdir" "$work/seeds" >"$work/seeds.log" 2>&1; then
  echo "not ok 1 - fuzz/make-seeds.sh"; cat "$work/seeds.log"; exit 1
fi

n=0 bad=0
run () {  # HARNESS SEEDDIR... (dictionary picked by harness)
  h=$1; shift
  [ "$only" = "  " ] || case $only in *" $h "*) ;; *) return ;; esac
  n=$((n + 1))
  bin=$build/fuzz/fuzz-$h
  case $h in meta-*) dict=$srcdir/fuzz/libvirt-xml.dict ;; *) dict=$srcdir/fuzz/qcow2.dict ;; esac
  if [ ! -x "$bin" ]; then
    echo "not ok $n - fuzz-$h: not built (configure --enable-fuzzing CC=clang)"
    bad=$((bad + 1)); return
  fi
  mkdir -p "$work/corpus-$h"
  log=$work/fuzz-$h.log
  # fuzz-repair runs its three oracles (the data oracle's finding of
  # tests/regress/repair-prealloc-zero-bad-entries-data.gz is fixed);
  # QK_FUZZ_REPAIR_ONLY in the environment still picks some
  envs=() note=
  if [ "$h" = repair ] && [ -n "${QK_FUZZ_REPAIR_ONLY:-}" ]; then
    envs=(QK_FUZZ_REPAIR_ONLY="$QK_FUZZ_REPAIR_ONLY")
    note=" (${envs[0]})"
  fi
  env "${envs[@]}" ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
      -max_len="$(max_len "$h")" -reload=0 -print_final_stats=1 -dict="$dict" \
      -artifact_prefix="$work/artifacts/$h-" \
      "$work/corpus-$h" "$@" >"$log" 2>&1
  rc=$?
  execs=$(sed -nE 's/^Done ([0-9]+) runs .*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] ||
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  cov0=$(sed -nE 's/^#[0-9]+[[:space:]]+INITED cov: ([0-9]+) .*/\1/p' "$log" | head -1)
  cov1=$(sed -nE 's/^#[0-9]+[[:space:]]+[A-Z]+ +cov: ([0-9]+) .*/\1/p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "ok $n - fuzz-$h: ${secs} s, ${execs:-?} executions, ${cov:-no coverage line}, no finding$note"
  else
    echo "not ok $n - fuzz-$h: exit $rc after ${execs:-?} executions"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -10 | sed 's/^/#   /'
    bad=$((bad + 1))
  fi
  n=$((n + 1))
  min=$(($(min_rate "$h") * secs))
  if [ "${execs:-0}" -ge "$min" ]; then
    echo "ok $n - fuzz-$h: at least $min executions (${execs})"
  else
    echo "not ok $n - fuzz-$h: at least $min executions (${execs:-none})"
    bad=$((bad + 1))
  fi
  n=$((n + 1))
  if [ -n "$cov0" ] && [ -n "$cov1" ] && [ "$cov1" -gt "$cov0" ]; then
    echo "ok $n - fuzz-$h: coverage grew from the seed corpus (cov: $cov0 -> $cov1)"
  else
    echo "not ok $n - fuzz-$h: coverage grew from the seed corpus (cov: ${cov0:-none} -> ${cov1:-none})"
    bad=$((bad + 1))
  fi
}
s=$work/seeds
run image "$s/qcow2"
run read "$s/qcow2"
run check "$s/qcow2"
run repair "$s/qcow2"
run amend "$s/qcow2"
run chain "$s/chain" "$s/qcow2"
run meta-file "$s/meta-file"
run meta-bulk "$s/meta-bulk"
echo "1..$n"
[ $bad -eq 0 ]
