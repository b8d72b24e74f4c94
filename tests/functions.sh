# Shared helpers for qcowkit shell tests. Sourced after tap.sh.
# Images are made by qemu-img/qemu-io at test time: no committed binaries.

qimg () { qemu-img "$@"; }
qio () { qemu-io -f qcow2 "$@" >/dev/null; }

# json_eq FILTER A B: jq-normalised equality of two JSON files
json_eq () {
  _a=$(jq -S "$1" "$2") || return 1
  _b=$(jq -S "$1" "$3") || return 1
  if [ "$_a" = "$_b" ]; then return 0; fi
  diff <(echo "$_a") <(echo "$_b") | head -20 | sed 's/^/#   /'
  return 1
}

# json_superset WANT GOT: every key of the JSON file WANT (qemu-img's) is in
# GOT (ours) with the same value, recursively; arrays must have the same
# length. GOT is projected onto WANT's keys and the two compared, so a
# failure prints a diff of just the fields qemu-img has (missing keys show as
# removed lines).
json_superset () {
  _a=$(jq -S . "$1") || return 1
  _b=$(jq -S --slurpfile q "$1" '
    def proj($q):
      if ($q|type) == "object" and type == "object" then
        . as $o
        | reduce ($q|keys[]) as $k ({};
            if ($o|has($k)) then .[$k] = ($o[$k] | proj($q[$k])) else . end)
      elif ($q|type) == "array" and type == "array" then
        . as $o | [range(0; length) as $i | $o[$i] | proj($q[$i])]
      else . end;
    proj($q[0])' "$2") || return 1
  if [ "$_a" = "$_b" ]; then return 0; fi
  diff -u <(echo "$_a") <(echo "$_b") | tail -n +3 | head -30 | sed 's/^/#   /'
  return 1
}

# file_state FILE: checksum and mtime, to prove a command did not modify it
file_state () { echo "$(sha256sum < "$1") $(stat -c '%Y.%y %s' "$1")"; }

# settle DIR: make the files under DIR look the same to every reader.
# - fsync them: ext4 writes back delayed allocations later, and may then
#   add extent tree blocks, changing st_blocks ("actual-size", and the
#   metadata preallocation heuristic of block status) between two tools.
# - read them: where qemu-img zero-fills the COW areas of a partial cluster
#   write with fallocate, ext4 keeps unwritten extents, which SEEK_DATA
#   reports as holes only until their pages are cached (readahead of nearby
#   metadata caches them). Block status looks at SEEK_DATA when it recurses
#   into the file, so the first tool to read an image would change what the
#   second one sees. Real holes stay holes.
settle () {
  find "$1" -type f -exec sync {} + &&
  find "$1" -type f -exec cat {} + > /dev/null
}

# ---------------------------------------------------------------------------
# The image matrix (the differential tests' inputs).
#
# build_matrix DIR creates the images under DIR with qemu-img and qemu-io
# (about a second) and writes DIR/MANIFEST: one line per image,
# "PATH [SNAPSHOT...]" separated by tabs (snapshot names may contain
# spaces), PATH relative to DIR. Tests cd to DIR and name images by these
# relative paths, so "filename", "backing-filename" and the path combining
# of "full-backing-filename" are compared on names relative to the working
# directory (the way users usually call qemu-img). A SNAPSHOT may be an ID.
#
# Covered: cluster sizes 512 B to 2 MiB; refcount_bits 1 to 64; compat 0.10
# and 1.1 (also amended from one to the other, and amended refcount
# widths); lazy_refcounts (clean, and dirty after a kill, with a bitmap left
# in use); extended_l2 on (16k to 2M clusters) and off; compression zlib
# and zstd (qemu-img convert -c and qemu-io write -c); internal snapshots,
# also around resizes (grow and shrink); bitmaps; backing chains three deep
# with relative names in subdirectories (qcow2 and raw bases, bases smaller
# and larger than the overlay, extended L2 overlays); external data files
# with and without data_file_raw, preallocated, and with a backing file;
# preallocation off/metadata/falloc/full; virtual sizes that are not a
# multiple of the cluster size, and 0; writes at varied offsets including
# partial clusters and subclusters, write -z, write -z -u, and discards;
# seeded pseudo-random workloads.
# ---------------------------------------------------------------------------

# mx_io IMG CMD...: run qemu-io commands on IMG, failing loudly.
mx_io () {
  local img=$1 a=() c
  shift
  for c in "$@"; do a+=(-c "$c"); done
  qemu-io -f qcow2 "${a[@]}" "$img" >/dev/null || {
    echo "# build_matrix: qemu-io on $img failed" >&2; return 1; }
}

# mx_workload IMG CLUSTER_SIZE VIRTUAL_SIZE [nocompress] [PATTERN_BASE]
# The standard guest writes, laid out in units of clusters, so that every
# cluster size gets full clusters, partial (sub)clusters, writes crossing a
# cluster boundary, zero writes with and without unmap, a discard, a
# compressed cluster and the last bytes of the disk. Cluster 8 ends up a
# preallocated zero cluster (write -z without -u keeps the allocation).
mx_workload () {
  local _i=$1 _c=$2 _s=$3 _nc=${4:-} _p=${5:-1} _cmds
  _cmds=(
    "write -P $((_p + 0x10)) 0 $_c"
    "write -P $((_p + 0x20)) $((2*_c + _c/4 + 7)) 1000"
    "write -P $((_p + 0x30)) $((4*_c - _c/2)) $_c"
    "write -z $((5*_c)) $_c"
    "write -P $((_p + 0x40)) $((6*_c)) $_c"
    "write -z -u $((6*_c)) $_c"
    "write -P $((_p + 0x50)) $((7*_c)) $((2*_c))"
    "discard $((7*_c)) $_c"
    "write -z $((8*_c)) $_c"
    "write -P $((_p + 0x60)) $((10*_c)) $_c"
    "write -z $((10*_c + _c/2)) $((_c/4))"
    "write -z $((12*_c + _c/4)) $((_c/2))"
    "write -P $((_p + 0x70)) $((_s/2 + 3*_c/8)) $((3*_c/8))"
    "write -P $((_p + 0x80)) $((_s - 1536)) 1536"
  )
  [ "$_nc" = nocompress ] ||
    _cmds+=("write -c -P $((_p + 0x90)) $((13*_c)) $_c")
  mx_io "$_i" "${_cmds[@]}"
}

# mx_random IMG CLUSTER_SIZE SEED [SNAPSHOT]: 48 seeded pseudo-random
# writes, zero writes (with and without unmap), discards and compressed
# writes of up to three clusters at any byte offset of a 64-cluster disk
# (with SNAPSHOT, one is taken halfway). The same seed gives the same
# operations; compressed writes over allocated clusters fail in QEMU, so
# qemu-io's status is not checked.
mx_random () {
  local img=$1 cs=$2 sz=$(($2 * 64)) k off len a=()
  RANDOM=$3
  for k in $(seq 48); do
    off=$(( (RANDOM * 32768 + RANDOM) % sz ))
    len=$(( RANDOM % (3 * cs) + 1 ))
    [ $((off + len)) -gt $sz ] && len=$((sz - off))
    case $((RANDOM % 6)) in
      0|1) a+=(-c "write -P $((RANDOM % 256)) $off $len") ;;
      2) a+=(-c "write -z $off $len") ;;
      3) a+=(-c "write -z -u $off $len") ;;
      4) a+=(-c "discard $((off / cs * cs)) $cs") ;;
      5) a+=(-c "write -c -P $((RANDOM % 256)) $((off / cs * cs)) $cs") ;;
    esac
    if [ $k = 24 ] && [ -n "${4:-}" ]; then
      qemu-io -f qcow2 "${a[@]}" "$img" > /dev/null 2>&1 || :
      qemu-img snapshot -c "$4" "$img" || return 1
      a=()
    fi
  done
  qemu-io -f qcow2 "${a[@]}" "$img" > /dev/null 2>&1 || :
  return 0
}

# mx_new NAME SIZE OPTIONS [nocompress]: create NAME and run the workload.
mx_new () {
  local _n=$1 _sz=$2 _o=$3 _cs
  _cs=$(echo "$_o" | sed -n 's/.*cluster_size=\([0-9]*[kM]*\).*/\1/p')
  case $_cs in
    '') _cs=65536 ;;
    *k) _cs=$(( ${_cs%k} * 1024 )) ;;
    *M) _cs=$(( ${_cs%M} * 1048576 )) ;;
  esac
  qemu-img create -q -f qcow2 -o "$_o" "$_n" "$_sz" || return 1
  mx_workload "$_n" "$_cs" "$(numfmt --from=iec "$_sz")" "${4:-}"
}

# Compressed writes fail on preallocated clusters, hence "nocompress" there.
build_matrix () {
  (
  set -e
  mkdir -p "$1"
  cd "$1"
  : > MANIFEST
  add () { (IFS=$'\t'; echo "$*") >> MANIFEST; }

  # cluster sizes (v3, 16-bit refcounts, zlib)
  mx_new cs512.qcow2 2M cluster_size=512;           add cs512.qcow2
  mx_new cs4k.qcow2 4M cluster_size=4k;             add cs4k.qcow2
  mx_new cs64k.qcow2 8M cluster_size=64k;           add cs64k.qcow2
  mx_new cs2m.qcow2 32M cluster_size=2M;            add cs2m.qcow2

  # refcount widths (several cluster sizes, so refblocks hold 64 to 262144
  # entries)
  mx_new rc1.qcow2 4M refcount_bits=1,cluster_size=4k;    add rc1.qcow2
  mx_new rc2.qcow2 2M refcount_bits=2,cluster_size=512;   add rc2.qcow2
  mx_new rc4.qcow2 4M refcount_bits=4,cluster_size=64k;   add rc4.qcow2
  mx_new rc8.qcow2 4M refcount_bits=8,cluster_size=4k;    add rc8.qcow2
  mx_new rc32.qcow2 4M refcount_bits=32,cluster_size=64k; add rc32.qcow2
  mx_new rc64.qcow2 2M refcount_bits=64,cluster_size=512; add rc64.qcow2

  # compat 0.10: no zero flag, so zero writes and discards differ
  mx_new v2.qcow2 4M compat=0.10,cluster_size=4k;   add v2.qcow2
  mx_new v2-64k.qcow2 8M compat=0.10;               add v2-64k.qcow2

  # lazy refcounts: clean, and dirty (killed in the middle of a session)
  mx_new lazy.qcow2 4M lazy_refcounts=on;           add lazy.qcow2
  qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k \
    dirty.qcow2 4M
  qemu-img bitmap --add dirty.qcow2 left-in-use   # stays "in-use" after the kill
  # (an inner shell reports the kill, into /dev/null)
  sh -c "qemu-io -f qcow2 -c 'write -P 7 8k 12k' -c 'write -z 64k 4k' \
      -c 'sigraise 9' dirty.qcow2; true" >/dev/null 2>&1
  add dirty.qcow2

  # extended L2 (32 subclusters: 512 B, 2 KiB, 64 KiB)
  mx_new el2-16k.qcow2 4M extended_l2=on,cluster_size=16k;  add el2-16k.qcow2
  mx_new el2-64k.qcow2 8M extended_l2=on,cluster_size=64k;  add el2-64k.qcow2
  mx_new el2-2m.qcow2 32M extended_l2=on,cluster_size=2M;   add el2-2m.qcow2

  # a virtual size that is not a multiple of the cluster size (qemu-img
  # rounds 3000000 up to 3000320), compressed too (a short last cluster);
  # and an empty disk
  mx_new odd.qcow2 3000000 cluster_size=64k;        add odd.qcow2
  qemu-img convert -q -c -O qcow2 odd.qcow2 odd-c.qcow2
  add odd-c.qcow2
  qemu-img create -q -f qcow2 empty.qcow2 0;        add empty.qcow2

  # compression: convert -c (every data cluster compressed), both types
  qemu-img convert -q -c -O qcow2 -o cluster_size=4k cs4k.qcow2 zlib-conv.qcow2
  add zlib-conv.qcow2
  qemu-img convert -q -c -O qcow2 -o compression_type=zstd,cluster_size=4k \
    cs4k.qcow2 zstd-conv.qcow2
  add zstd-conv.qcow2
  qemu-img convert -q -c -O qcow2 -o compression_type=zstd,cluster_size=512 \
    cs512.qcow2 zstd-512.qcow2
  add zstd-512.qcow2
  qemu-img convert -q -c -O qcow2 -o cluster_size=2M,extended_l2=on \
    el2-64k.qcow2 zlib-el2-2m.qcow2
  add zlib-el2-2m.qcow2
  mx_new zstd-io.qcow2 4M compression_type=zstd,extended_l2=on,cluster_size=32k
  add zstd-io.qcow2

  # internal snapshots, one taken before a resize (grow), one before a
  # shrink, so snapshot disk sizes differ from the current size
  mx_new snap.qcow2 4M cluster_size=64k
  qemu-img snapshot -c before-grow snap.qcow2
  qemu-img resize -q snap.qcow2 6M
  mx_io snap.qcow2 'write -P 0xa1 0 96k' 'write -P 0xa2 5M 64k' \
    'write -z 2M 64k'
  qemu-img snapshot -c grown snap.qcow2
  mx_io snap.qcow2 'write -P 0xa3 5M 4k' 'discard 5M 64k' 'write -P 0xa4 32k 1k'
  qemu-img resize -q --shrink snap.qcow2 5M
  qemu-img snapshot -c shrunk snap.qcow2
  mx_io snap.qcow2 'write -P 0xa5 1M 128k'
  add snap.qcow2 before-grow grown shrunk 1
  mx_new snap-v2.qcow2 4M compat=0.10,cluster_size=4k
  qemu-img snapshot -c first snap-v2.qcow2
  mx_io snap-v2.qcow2 'write -P 0xb1 0 8k' 'discard 4k 4k'
  qemu-img snapshot -c 'second one' snap-v2.qcow2
  add snap-v2.qcow2 first 'second one'
  mx_new snap-el2.qcow2 4M extended_l2=on,cluster_size=16k,refcount_bits=2
  qemu-img snapshot -c s1 snap-el2.qcow2
  mx_io snap-el2.qcow2 'write -P 0xc1 1k 1k' 'write -z 64k 16k'
  add snap-el2.qcow2 s1

  # bitmaps (enabled and disabled, several granularities), then writes
  qemu-img create -q -f qcow2 -o cluster_size=4k bitmaps.qcow2 4M
  qemu-img bitmap --add bitmaps.qcow2 b0
  qemu-img bitmap --add -g 64k bitmaps.qcow2 'second bitmap'
  qemu-img bitmap --add -g 512 --disable bitmaps.qcow2 off
  mx_workload bitmaps.qcow2 4096 4194304
  add bitmaps.qcow2

  # backing chains: base <- mid <- sub/top, names relative to each image's
  # directory ("../mid.qcow2" from sub/)
  mkdir -p chain/sub
  mx_new chain/base.qcow2 8M cluster_size=64k
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o cluster_size=4k \
    chain/mid.qcow2 8M
  mx_io chain/mid.qcow2 'write -P 0xd1 60k 8k' 'write -z 0 4k' \
    'discard 640k 64k' 'write -P 0xd2 7M 4k'
  qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 \
    -o extended_l2=on,cluster_size=32k chain/sub/top.qcow2 8M
  mx_io chain/sub/top.qcow2 'write -P 0xd3 1k 3k' 'write -z 130k 2k' \
    'discard 448k 32k' 'write -z -u 896k 32k' 'write -P 0xd4 7M 1k'
  add chain/sub/top.qcow2
  add chain/mid.qcow2

  # a raw base whose size is not a multiple of 512 (QEMU rounds it up),
  # bases smaller than their overlays, a v2 middle
  mkdir -p chain2/a/b
  head -c 3M /dev/zero | tr '\0' '\251' > chain2/base.raw
  truncate -s 3100000 chain2/base.raw
  qemu-img create -q -f qcow2 -b base.raw -F raw -o compat=0.10 \
    chain2/mid.qcow2 5M
  mx_io chain2/mid.qcow2 'write -P 0xe1 1M 64k' 'write -z 2M 64k' \
    'discard 0 64k'
  qemu-img create -q -f qcow2 -b ../../mid.qcow2 -F qcow2 chain2/a/b/top.qcow2 6M
  mx_io chain2/a/b/top.qcow2 'write -P 0xe2 4M 4k' 'write -z 1M 4k' \
    'discard 2M 64k'
  add chain2/a/b/top.qcow2

  # external data files (QEMU opens a relative data file name relative to
  # its working directory, qcowkit relative to the image: the same here)
  mx_new df.qcow2 4M data_file=df.data,cluster_size=4k nocompress
  add df.qcow2
  mx_new dfraw.qcow2 4M data_file=dfraw.data,data_file_raw=on nocompress
  add dfraw.qcow2
  # preallocated, with and without data_file_raw
  mx_new dfpre.qcow2 4M \
    data_file=dfpre.data,preallocation=metadata,cluster_size=4k nocompress
  add dfpre.qcow2
  mx_new dfrawpre.qcow2 4M \
    data_file=dfrawpre.data,data_file_raw=on,preallocation=falloc nocompress
  add dfrawpre.qcow2
  # with a backing file (not allowed with data_file_raw), extended L2
  qemu-img create -q -f qcow2 -b cs64k.qcow2 -F qcow2 \
    -o data_file=dfb.data,extended_l2=on,cluster_size=16k dfb.qcow2 8M
  mx_workload dfb.qcow2 16384 8388608 nocompress 0x40
  add dfb.qcow2

  # preallocation
  mx_new pre-off.qcow2 4M preallocation=off
  add pre-off.qcow2
  mx_new pre-meta.qcow2 4M preallocation=metadata,cluster_size=4k nocompress
  add pre-meta.qcow2
  mx_new pre-meta-el2.qcow2 4M preallocation=metadata,extended_l2=on nocompress
  add pre-meta-el2.qcow2
  mx_new pre-falloc.qcow2 4M preallocation=falloc nocompress
  add pre-falloc.qcow2
  mx_new pre-full.qcow2 4M preallocation=full,cluster_size=16k nocompress
  add pre-full.qcow2

  # real holes in data clusters (punched into the file, as a sparse copy
  # or a thin-provisioning storage would leave them): map recurses into
  # the file when most refcounted clusters are not allocated on the host
  # (QEMU's metadata preallocation heuristic). On ext4 one punched cluster
  # here is exactly the heuristic's threshold; two are past it.
  for n in 1 2; do
    qemu-img create -q -f qcow2 punched-$n.qcow2 4M
    mx_io punched-$n.qcow2 'write -P 0x5a 0 640k'
    sync punched-$n.qcow2
    for k in $(seq $n); do   # guest cluster 2k is at host 0x50000 + 2k * 64k
      fallocate -p -o $((0x50000 + k * 131072)) -l 65536 punched-$n.qcow2
    done
    add punched-$n.qcow2
  done

  # seeded random guest writes
  qemu-img create -q -f qcow2 -o cluster_size=512 rnd-512.qcow2 32k
  mx_random rnd-512.qcow2 512 1 half;              add rnd-512.qcow2 half
  qemu-img create -q -f qcow2 -o cluster_size=4k,compat=0.10 rnd-v2.qcow2 256k
  mx_random rnd-v2.qcow2 4096 2;                   add rnd-v2.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k \
    rnd-el2-16k.qcow2 1M
  mx_random rnd-el2-16k.qcow2 16384 3 half;        add rnd-el2-16k.qcow2 half
  qemu-img create -q -f qcow2 -o extended_l2=on,compression_type=zstd \
    rnd-el2-64k.qcow2 4M
  mx_random rnd-el2-64k.qcow2 65536 4;             add rnd-el2-64k.qcow2
  qemu-img create -q -f qcow2 -o cluster_size=4k -b cs64k.qcow2 -F qcow2 \
    rnd-backed.qcow2 256k
  mx_random rnd-backed.qcow2 4096 5;               add rnd-backed.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k \
    -b ../cs4k.qcow2 -F qcow2 chain/rnd-el2-backed.qcow2 2M
  mx_random chain/rnd-el2-backed.qcow2 32768 6;    add chain/rnd-el2-backed.qcow2

  # amended images: v2 -> v3 (snapshot table rewritten), and refcount
  # widths changed with snapshots present
  cp snap-v2.qcow2 amend-v3.qcow2
  qemu-img amend -q -f qcow2 -o compat=1.1 amend-v3.qcow2
  add amend-v3.qcow2 first 'second one'
  cp snap.qcow2 amend-rc64.qcow2
  qemu-img amend -q -f qcow2 -o refcount_bits=64 amend-rc64.qcow2
  add amend-rc64.qcow2 before-grow 2 shrunk

  # (tests/mutation.sh: MATRIX_IMAGES="A B" keeps only those MANIFEST rows,
  # for a mutant that any image catches; CI's suite unsets it)
  if [ -n "${MATRIX_IMAGES:-}" ]; then
    awk -F'\t' -v keep=" $MATRIX_IMAGES " 'index(keep, " " $1 " ")' MANIFEST > MANIFEST.keep
    mv MANIFEST.keep MANIFEST
    [ -s MANIFEST ]
  fi

  settle .
  )
}

# ---------------------------------------------------------------------------
# Processes and waits. A test never sleeps for a fixed time: it waits for a
# condition, within a bound, and a wait that runs out fails loudly, saying
# what it waited for. A process a test starts in the background is
# registered with kill_on_exit, so that no run, passed, failed or
# interrupted (INT, TERM, HUP: see at_exit), leaves it running.
# ---------------------------------------------------------------------------

# now_ms: the time in milliseconds (no fork)
now_ms () { local t=${EPOCHREALTIME/[.,]/}; echo $((10#$t / 1000)); }

# wait_for SECONDS CMD...: run CMD every 50 ms until it succeeds. False,
# with a diagnostic naming CMD, if it has not after SECONDS.
wait_for () {
  local secs=$1 end
  shift
  end=$(( $(now_ms) + secs * 1000 ))
  until "$@"; do
    if [ "$(now_ms)" -ge "$end" ]; then
      diag "wait_for: still false after $secs s: $*"
      return 1
    fi
    sleep 0.05
  done
}

# proc_alive PID: PID runs (a zombie, exited but not yet reaped, does not)
proc_alive () {
  local s
  { read -r s < "/proc/$1/stat"; } 2> /dev/null || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ]
}

# kill_on_exit PID: stop PID (stop_process) when the test exits, unless
# the test has stopped it itself before.
tap_procs=" " tap_procs_trap=no
kill_on_exit () {
  [ "$tap_procs_trap" = yes ] || at_exit 'stop_all_processes'
  tap_procs_trap=yes
  tap_procs="$tap_procs$1 "
}
stop_all_processes () {
  local p
  for p in $tap_procs; do stop_process "$p" 0; done
}

# stop_process PID [SECONDS]: wait SECONDS (default 0) for PID to exit by
# itself, then SIGTERM it, 5 s later SIGKILL it; reap it. Returns its
# status (wait's, for a child of this shell). PID is no longer killed at
# exit.
stop_process () {
  local pid=$1 secs=${2:-0} rc
  tap_procs=${tap_procs/ $pid / }
  if proc_alive "$pid" && [ "$secs" -gt 0 ]; then
    wait_for "$secs" eval "! proc_alive $pid" ||
      diag "stop_process: $pid did not exit by itself in $secs s"
  fi
  if proc_alive "$pid"; then
    kill -TERM "$pid" 2> /dev/null
    wait_for 5 eval "! proc_alive $pid" || kill -KILL "$pid" 2> /dev/null
  fi
  wait "$pid" 2> /dev/null
  rc=$?
  return $rc
}

# qemu_lock_held IMG: QEMU's lock on IMG is held: qemu-img info refuses it
# for the lock (as it does when a VM or a qemu-io has the image open).
qemu_lock_held () {
  qemu-img info "$1" 2>&1 > /dev/null |
    grep -q 'Failed to get shared "write" lock'
}

# start_holder IMG: a qemu-io with IMG open read-write, holding QEMU's
# locks on it, until stop_holder or the end of the test. Waits (60 s at
# most) until the lock shows in /proc/locks, then asks qemu-img whether
# it sees it; false, with a diagnostic, if it does
# not. Sets holder_pid, holder_fd (qemu-io's input: write qemu-io
# commands to it) and holder_out (the file of qemu-io's output). qemu-io
# reads its commands from a FIFO that only this shell writes: should the
# test die even by SIGKILL, qemu-io reads the end of its input and quits.
# One holder at a time.
# ofd_write_locked FILE: a process holds QEMU's lock on FILE's "write"
# permission byte (101), as /proc/locks shows it. Unlike qemu_lock_held,
# this takes no lock itself: a probe with qemu-img info while qemu-io
# starts can make qemu-io's own locking fail ("Failed to get "write"
# lock"), as it did in CI.
ofd_write_locked () {
  local d ino
  read -r d ino < <(stat -L -c '%d %i' "$1" 2>/dev/null) || return 1
  awk -v dev="$(printf '%02x:%02x:%s' $(((d >> 8) & 0xfff)) \
                 $(((d & 0xff) | ((d >> 12) & 0xfff00))) "$ino")" \
    '$2 == "OFDLCK" && $(NF - 2) == dev && $(NF - 1) <= 101 &&
     ($NF == "EOF" || $NF >= 101) { found = 1 } END { exit !found }' /proc/locks
}

start_holder () {
  local img=$1 fifo
  fifo=$(mktemp -u "${T:?start_holder needs scratch}/holder.XXXXXX")
  holder_out=$fifo.out
  mkfifo "$fifo" || return 1
  qemu-io -f qcow2 "$img" < "$fifo" > "$holder_out" 2>&1 &
  holder_pid=$!
  kill_on_exit "$holder_pid"
  # read-write: never blocks (Linux), and this shell is the only writer
  exec {holder_fd}<> "$fifo"
  # ready when the lock shows in /proc/locks (a probe that takes no lock),
  # or at once if qemu-io has exited; then qemu-img must see it too
  wait_for 60 eval "! proc_alive $holder_pid || ofd_write_locked '$img'"
  if ! proc_alive "$holder_pid"; then
    diag "start_holder: qemu-io on $img exited: $(head -3 "$holder_out")"
    return 1
  fi
  qemu_lock_held "$img" ||
    { diag "start_holder: qemu-io runs, but $img is not locked"; return 1; }
}

# stop_holder: close the holder's input; qemu-io quits (30 s at most, then
# it is killed). Returns qemu-io's exit status.
stop_holder () {
  exec {holder_fd}>&-
  stop_process "$holder_pid" 30
}

# ---------------------------------------------------------------------------
# The fault sweep of a writing command (amend, rebase, commit, repair).
#
# fault_sweep NAME CLAIM MAX RUN VERIFY DONE [ARGS...]
# For each kind of fault (the command killed by SIGKILL, or failed with
# EIO, at a write or at a flush; QCOWKIT_FAULT) and each point N = 1, 2,
# ...: `RUN FAULT ARGS...` runs the command on a fresh copy with
# QCOWKIT_FAULT=FAULT (FAULT is KIND-N) and returns its exit status; the
# shell's report of the kill is discarded. Status 137 (killed) or
# $SWEEP_FAILED_RC (failed; default 1) is a fault point: `VERIFY FAULT
# ARGS...` checks what the command left, calling sweep_bad WHAT for each
# problem. Any other status means that the command ran through without
# meeting fault N: the status must be $SWEEP_DONE_RC (default 0) and
# `DONE ARGS...` (: for nothing more) must hold, and the kind is done. More than MAX points of one kind
# is a failure too, and so is a sweep without a fault point. One
# assertion: "fault sweep, NAME: killed or failed at each of P writes and
# flushes: CLAIM", or its failure listing each problem as KIND-N:WHAT.
# ---------------------------------------------------------------------------
fault_sweep () {
  local name=$1 claim=$2 max=$3 run=$4 verify=$5 done_=$6
  shift 6
  local kind n rc finished points=0 failed_rc=${SWEEP_FAILED_RC:-1}
  local done_rc=${SWEEP_DONE_RC:-0}
  sweep_problems=
  for kind in write-kill write-fail flush-kill flush-fail; do
    finished=no
    for n in $(seq 1 "$max"); do
      sweep_point=$kind-$n
      { "$run" "$sweep_point" "$@"; rc=$?; } 2> /dev/null
      if [ "$rc" -ne 137 ] && [ "$rc" -ne "$failed_rc" ]; then
        { [ "$rc" -eq "$done_rc" ] && "$done_" "$@"; } ||
          sweep_bad "unfaulted-run-rc$rc"
        finished=yes
        break
      fi
      points=$((points + 1))
      "$verify" "$sweep_point" "$@"
    done
    [ "$finished" = yes ] ||
      sweep_problems="$sweep_problems $kind:more-than-$max-points"
  done
  if [ -z "$sweep_problems" ] && [ "$points" -gt 0 ]; then
    pass "fault sweep, $name: killed or failed at each of $points writes and flushes: $claim"
  else
    fail "fault sweep, $name ($points points)" "$sweep_problems"
  fi
}
# sweep_bad WHAT: in a VERIFY or DONE, a problem at the current fault point
sweep_bad () { sweep_problems="$sweep_problems $sweep_point:$1"; }

# sweep_undone JOURNAL IMG SHA256: in a VERIFY, the undo journal (if the
# command got as far as making one) puts back IMG's original bytes; and a
# command that left no journal wrote nothing.
# (One sha256sum, its " -" cut by the shell: a sweep runs this at every
# point.)
sweep_undone () {
  local h
  if [ -f "$1" ]; then
    qcowkit undo "$1" "$2" > /dev/null 2>&1
    h=$(sha256sum < "$2")
    [ "${h%% *}" = "$3" ] || sweep_bad undo-differs
  else
    h=$(sha256sum < "$2")
    [ "${h%% *}" = "$3" ] || sweep_bad written-without-journal
  fi
}
