# Shared helpers for benchmarks: wall time and peak RSS of a command, best
# of N runs, measured in the same run for qcowkit and its anchor.
BENCH_DIR=${BENCH_DIR:-/var/tmp/qcowkit-bench}
mkdir -p "$BENCH_DIR"
RUNS=${RUNS:-3}

# measure CMD...: prints "seconds maxrss_kib" of the fastest of $RUNS runs
measure () {
  local best= best_rss= t r
  for _ in $(seq "$RUNS"); do
    local t0=$EPOCHREALTIME
    /usr/bin/time -f '%M' -o "$BENCH_DIR/.time" "$@" >/dev/null 2>"$BENCH_DIR/.err" || {
      echo "benchmark command failed: $*" >&2; cat "$BENCH_DIR/.err" >&2; return 1; }
    t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b - a}')
    read -r r < "$BENCH_DIR/.time"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; best_rss=$r; fi
  done
  echo "$best $best_rss"
}

ratio () { awk -v a="$1" -v b="$2" 'BEGIN{ if (a <= 0) a = 0.001; printf "%.2f", b / a }'; }

row () {  # row NAME QK_SECS QK_RSS ANCHOR_SECS ANCHOR_RSS
  printf '| %s | %s s | %s MiB | %s s | %s MiB | %sx |\n' "$1" "$2" \
    "$(awk -v k="$3" 'BEGIN{printf "%.1f", k/1024}')" "$4" \
    "$(awk -v k="$5" 'BEGIN{printf "%.1f", k/1024}')" "$(ratio "$2" "$4")"
}
