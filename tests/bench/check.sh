#!/bin/bash
# qcowkit check against qemu-img check, same run, same files, the two
# tools interleaved run by run:
# - 1 TiB preallocation=metadata with no snapshots and with 4 internal
#   snapshots (every L2 table shared by 5 L1 tables), the same where the
#   active image then wrote one cluster in every L2 table's range (so every
#   table exists twice, the snapshots' and the active one), and 64 GiB with
#   4 KiB clusters;
# - images with data written by qemu-io in random order (so that host
#   order and guest order differ, and walking the L2 tables jumps between
#   refcount blocks): 20 GiB with 8 GiB written in 64 KiB writes
#   ("fragmented"); 20 GiB with 2 GiB written, then three times a snapshot
#   and 256 MiB rewritten; 1 TiB with one 64 KiB write in each of 16,384
#   random 64 MiB slots ("scatter": an L2 table per write, between the
#   data); 8 GiB written compressed, in random order; a chain of three
#   (20 GiB base with 1 GiB, two overlays with 256 MiB each), checked
#   with --chain against qemu-img check of each image in turn.
#
# - 4 TiB and 15 TiB preallocation=metadata (memory: both tools keep a
#   refcount per host cluster, 2 bytes at the default width).
#
# BENCH_ONLY="frag scatter" runs only the rows named (p0 p4 pd s4k p4t
# p15t frag frag3s scatter compressed chain). BENCH_READS=1 then also
# counts, with strace, the bytes and read calls each tool makes on the
# image files. BENCH_PIN="taskset -c 0" runs both tools under that
# prefix (one core each).
set -euo pipefail
. "$(dirname "$0")/common.sh"

p0=$BENCH_DIR/prealloc-1t.qcow2
p4=$BENCH_DIR/prealloc-1t-4snap.qcow2
pd=$BENCH_DIR/prealloc-1t-4snap-diverged.qcow2
s4k=$BENCH_DIR/c4k-64g.qcow2
p4t=$BENCH_DIR/prealloc-4t.qcow2
p15t=$BENCH_DIR/prealloc-15t.qcow2
frag=$BENCH_DIR/frag-20g-8g.qcow2
frag3s=$BENCH_DIR/frag-20g-3snap.qcow2
scatter=$BENCH_DIR/scatter-1t.qcow2
compressed=$BENCH_DIR/compressed-8g.qcow2
chain=$BENCH_DIR/chain-top.qcow2

make_image () {  # make_image NAME
  local f t
  case $1 in
    p0) [ -f "$p0" ] ||
          qemu-img create -q -f qcow2 -o preallocation=metadata "$p0" 1T ;;
    p4) if [ ! -f "$p4" ]; then
          qemu-img create -q -f qcow2 -o preallocation=metadata "$p4.tmp" 1T
          for s in 1 2 3 4; do qemu-img snapshot -c "s$s" "$p4.tmp"; done
          mv "$p4.tmp" "$p4"
        fi ;;
    pd) if [ ! -f "$pd" ]; then
          make_image p4
          cp --sparse=always "$p4" "$pd.tmp"
          # one 64 KiB write per 512 MiB (the range of one L2 table)
          seq 0 2047 | awk '{ printf "write -P 7 %.0f 64k\n", $1 * 536870912 }' |
            qemu-io -f qcow2 "$pd.tmp" >/dev/null
          mv "$pd.tmp" "$pd"
        fi ;;
    s4k) [ -f "$s4k" ] || qemu-img create -q -f qcow2 \
           -o cluster_size=4096,preallocation=metadata "$s4k" 64G ;;
    p4t) [ -f "$p4t" ] ||
           qemu-img create -q -f qcow2 -o preallocation=metadata "$p4t" 4T ;;
    p15t) [ -f "$p15t" ] ||
            qemu-img create -q -f qcow2 -o preallocation=metadata "$p15t" 15T ;;
    frag) rand_image "$frag" 20G 131072 327680 65536 65536 1 ;;
    frag3s) if [ ! -f "$frag3s" ]; then
              t=$frag3s.tmp
              qemu-img create -q -f qcow2 "$t" 20G
              randwrites "$t" 32768 327680 65536 65536 2
              for s in 1 2 3; do
                qemu-img snapshot -c "s$s" "$t"
                randwrites "$t" 4096 327680 65536 65536 $((2 + s))
              done
              mv "$t" "$frag3s"
            fi ;;
    scatter) rand_image "$scatter" 1T 16384 16384 67108864 65536 6 ;;
    compressed) rand_image "$compressed" 8G 131072 131072 65536 65536 7 -c ;;
    chain) if [ ! -f "$chain" ]; then
             f=$BENCH_DIR/chain-base.qcow2
             qemu-img create -q -f qcow2 "$f" 20G
             randwrites "$f" 16384 327680 65536 65536 8
             qemu-img create -q -f qcow2 -b chain-base.qcow2 -F qcow2 \
               "$BENCH_DIR/chain-mid.qcow2"
             randwrites "$BENCH_DIR/chain-mid.qcow2" 4096 327680 65536 65536 9
             qemu-img create -q -f qcow2 -b chain-mid.qcow2 -F qcow2 \
               "$chain.tmp"
             randwrites "$chain.tmp" 4096 327680 65536 65536 10
             mv "$chain.tmp" "$chain"
           fi ;;
  esac
}

describe () {
  case $1 in
    p0) echo "1 TiB preallocation=metadata, no snapshot" ;;
    p4) echo "1 TiB preallocation=metadata, 4 snapshots" ;;
    pd) echo "the same, every table diverged" ;;
    s4k) echo "64 GiB preallocation=metadata, 4 KiB clusters" ;;
    p4t) echo "4 TiB preallocation=metadata" ;;
    p15t) echo "15 TiB preallocation=metadata" ;;
    frag) echo "20 GiB, 8 GiB in random 64 KiB writes" ;;
    frag3s) echo "20 GiB, 2 GiB random, 3 snapshots each followed by 256 MiB random" ;;
    scatter) echo "1 TiB, 16,384 64 KiB writes scattered in random order" ;;
    compressed) echo "8 GiB written compressed in random order" ;;
    chain) echo "chain of 3 (20 GiB, 1 GiB + 2 x 256 MiB random), --chain" ;;
  esac
}

# measure2 CMD_A CMD_B: the two shell commands run in turn, $RUNS times
# each, interleaved (A B A B ...: load on the machine hits both alike);
# prints "a_seconds a_maxrss_kib b_seconds b_maxrss_kib", the fastest run
# of each and that run's peak RSS (of the largest process, for a loop).
# Both go through bash -c (which execs a lone command): the same start-up
# cost, about a millisecond, in both tools' times.
measure2 () {
  local i c t r t0 bt=() br=()
  for i in $(seq "$RUNS"); do
    for c in 0 1; do
      local cmd=$1
      [ "$c" = 1 ] && cmd=$2
      t0=$EPOCHREALTIME
      /usr/bin/time -f '%M' -o "$BENCH_DIR/.time" bash -c "$cmd" \
        >/dev/null 2>"$BENCH_DIR/.err" || {
        echo "benchmark command failed: $cmd" >&2
        cat "$BENCH_DIR/.err" >&2
        return 1
      }
      t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b - a}')
      read -r r < "$BENCH_DIR/.time"
      if [ -z "${bt[c]:-}" ] || awk "BEGIN{exit !($t < ${bt[c]})}"; then
        bt[c]=$t
        br[c]=$r
      fi
    done
  done
  echo "${bt[0]} ${br[0]} ${bt[1]} ${br[1]}"
}

# reads CMD: "bytes calls" read from files under $BENCH_DIR by the shell
# command CMD and its threads and children
reads () {
  rm -f "$BENCH_DIR"/.strace.*
  strace -ff -y -e trace=read,pread64,readv,preadv,preadv2 \
    -o "$BENCH_DIR/.strace" bash -c "$1" >/dev/null 2>&1 || true
  cat "$BENCH_DIR"/.strace.* | grep -F "<$BENCH_DIR/" |
    awk -F'= ' '$NF ~ /^[0-9]+$/ { s += $NF; n++ } END { print s + 0, n + 0 }'
  rm -f "$BENCH_DIR"/.strace.*
}

rows=${BENCH_ONLY:-p0 p4 pd s4k p4t p15t frag frag3s scatter compressed chain}
pin=${BENCH_PIN:+$BENCH_PIN }
if [ "${BENCH_READS:-}" = 1 ] && ! command -v strace >/dev/null; then
  echo "BENCH_READS=1 needs strace" >&2
  exit 1
fi
for r in $rows; do make_image "$r"; done

mib () { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

summary='{c:.corruptions,l:.leaks,e:."image-end-offset",a:."allocated-clusters"}'
reads_rows=()
echo "| check | qcowkit | RSS | qemu-img | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for r in $rows; do
  img=${!r}
  qcmd="${pin}qcowkit check $img"
  acmd="${pin}qemu-img check $img"
  if [ "$r" = chain ]; then
    qcmd="${pin}qcowkit check --chain $img"
    acmd="for i in $BENCH_DIR/chain-base.qcow2 $BENCH_DIR/chain-mid.qcow2"
    acmd="$acmd $img; do ${pin}qemu-img check \$i || exit; done"
  fi
  read -r qs qr as ar < <(measure2 "$qcmd" "$acmd")
  if [ "$r" = chain ]; then   # an array, the top image first
    q=$(qcowkit check --chain --output=json "$img" | jq -c ".[] | $summary")
    a=$(for i in "$img" "$BENCH_DIR/chain-mid.qcow2" \
                 "$BENCH_DIR/chain-base.qcow2"; do
          qemu-img check --output=json "$i" | jq -c "$summary"
        done)
  else
    q=$(qcowkit check --output=json "$img" | jq -c "$summary")
    a=$(qemu-img check --output=json "$img" | jq -c "$summary")
  fi
  [ "$q" = "$a" ] || echo "RESULTS DIFFER on $img: $q vs $a" >&2
  row "$(describe "$r") ($(du -h "$img" | cut -f1) on disk)" \
    "$qs" "$qr" "$as" "$ar"
  if [ "${BENCH_READS:-}" = 1 ]; then
    read -r qb qn < <(reads "$qcmd")
    read -r ab an < <(reads "$acmd")
    reads_rows+=("| $(describe "$r") | $(mib "$qb") | $qn | $(mib "$ab") | $an |")
  fi
done
if [ "${BENCH_READS:-}" = 1 ]; then
  echo
  echo "| bytes read from the image files (strace) | qcowkit | calls | qemu-img | calls |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${reads_rows[@]}"
fi
