#!/bin/bash
# Coverage after a fixed number of executions, with the structure-aware
# mutator (fuzz-H) and without it (fuzz-H-nomut), same seeds, same -seed.
#   fuzz/measure.sh [RUNS] [SEED]    (from a --enable-fuzzing build tree)
set -u
runs=${1:-20000} seed=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
srcdir=${srcdir:-$(dirname "$here")}
build=${top_builddir:-.}
work=${MEASURE_DIR:-$build/measure}
rm -rf "$work"; mkdir -p "$work"
bash "$srcdir/fuzz/make-seeds.sh" "$srcdir" "$work/seeds" >/dev/null 2>&1 || exit 1
one () {  # HARNESS BINARY SEEDDIRS...
  h=$1 b=$2; shift 2
  mkdir -p "$work/c-$b"
  ASAN_OPTIONS=detect_leaks=0 "$build/fuzz/$b" -runs="$runs" -seed="$seed" \
    -rss_limit_mb=2048 -timeout=10 -max_len=1048576 -dict="$srcdir/fuzz/qcow2.dict" \
    "$work/c-$b" "$@" > "$work/$b.log" 2>&1
  echo "$h $b $(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/$b.log" | tail -1)"
}
s=$work/seeds
for h in image read check chain; do
  case $h in chain) d="$s/chain $s/qcow2" ;; *) d=$s/qcow2 ;; esac
  # shellcheck disable=SC2086
  one $h fuzz-$h $d &
  # shellcheck disable=SC2086
  one $h fuzz-$h-nomut $d &
  wait
done
