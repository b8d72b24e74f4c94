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

# randwrites IMG COUNT SLOTS SLOT_BYTES LEN [SEED [FLAGS]]: COUNT writes of
# LEN bytes at the starts of distinct slots chosen at random, in random
# order (a fixed seed: the same image every time)
randwrites () {
  local img=$1 count=$2 slots=$3 slot=$4 len=$5 seed=${6:-1} flags=${7:-}
  shuf -i 0-$((slots - 1)) -n "$count" \
       --random-source=<(openssl enc -aes-128-ctr -pass "pass:$seed" \
                           -nosalt </dev/zero 2>/dev/null) |
    awk -v s="$slot" -v l="$len" -v f="$flags" \
        '{ printf "write %s -P %d %.0f %d\n", f, $1 % 250 + 1, $1 * s, l }' |
    qemu-io -f qcow2 "$img" >/dev/null
}

# rand_image IMG SIZE COUNT SLOTS SLOT_BYTES LEN SEED [FLAGS]: IMG of SIZE
# with those writes, unless it exists
rand_image () {
  [ -f "$1" ] && return
  qemu-img create -q -f qcow2 "$1.tmp" "$2"
  randwrites "$1.tmp" "${@:3}"
  mv "$1.tmp" "$1"
}

# timed CMD...: "seconds peak_rss_kib" of one run; a failing command stops
# the benchmark (a failed run must never pass for a fast one)
timed () {
  local t0=$EPOCHREALTIME r
  /usr/bin/time -f '%M' -o "$BENCH_DIR/.time" "$@" >/dev/null 2>"$BENCH_DIR/.err" || {
    echo "benchmark command failed: $*" >&2; cat "$BENCH_DIR/.err" >&2; return 1; }
  read -r r < "$BENCH_DIR/.time"
  echo "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b - a}') $r"
}
# timed_any CMD...: the same, whatever the command's exit status (a
# repair's exit status says what it found, not whether it ran)
timed_any () {
  local t0=$EPOCHREALTIME r
  /usr/bin/time -f '%M' -o "$BENCH_DIR/.time" "$@" >/dev/null 2>&1 || true
  read -r r < "$BENCH_DIR/.time"
  echo "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b - a}') $r"
}
