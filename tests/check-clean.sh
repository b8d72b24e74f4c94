#!/bin/bash
# The clean matrix: every kind of image qemu-img and qemu-io make (cluster
# sizes 512 B to 2 MiB, refcount widths 1 to 64 bits, compat 0.10 and 1.1,
# extended L2, zlib and zstd compression, internal snapshots, bitmaps, a
# backing chain, external data files, preallocation, zero clusters,
# discards) checks clean in both qcowkit check and qemu-img check, with
# the same exit status and the same image-end-offset, total-clusters,
# allocated-clusters, fragmented-clusters and compressed-clusters; and
# qcowkit reports no problem at all, not even a warning.
#
# CHECK_CLEAN="name1 name2" runs only those images.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq
scratch
start=$(date +%s)

FIELDS='image-end-offset total-clusters allocated-clusters fragmented-clusters compressed-clusters corruptions leaks check-errors'

# A mixed guest workload: data in several L2 ranges, a compressed cluster,
# zero clusters (plain, and preallocated where the cluster stays
# allocated), a discard and a rewrite, and partial-cluster writes.
workload () {  # workload IMG [compress]
  local img=$1 c=()
  c+=(-c 'write -P 1 0 192k' -c 'write -P 2 1M 64k' -c 'write -P 3 3M 4k')
  c+=(-c 'write -P 4 8M 512' -c 'write -P 5 40M 128k')
  c+=(-c 'write -z 1M 64k' -c 'write -z -u 8M 4k' -c 'discard 40M 64k')
  c+=(-c 'write -P 6 40M 4k' -c 'write -P 7 63M 1M')
  if [ "${2:-}" = compress ]; then
    c+=(-c 'write -c -P 8 16M 2M' -c 'write -c -P 9 20M 2M')
  fi
  qemu-io -f qcow2 "${c[@]}" "$img" >/dev/null
}
snapshot1 () {  # snapshot1 IMG: one snapshot, then copy-on-write
  qemu-img snapshot -c s1 "$1" &&
  qemu-io -f qcow2 -c 'write -P 10 0 64k' "$1" >/dev/null
}
snapshots () {  # snapshots IMG: snapshots with copy-on-write between
  qemu-img snapshot -c s1 "$1" &&
  qemu-io -f qcow2 -c 'write -P 10 0 64k' -c 'write -P 11 30M 64k' "$1" \
    >/dev/null &&
  qemu-img snapshot -c s2 "$1" &&
  qemu-io -f qcow2 -c 'write -P 12 64k 64k' "$1" >/dev/null &&
  qemu-img snapshot -c s3 "$1" && qemu-img snapshot -d s2 "$1"
}
mk () { qemu-img create -q -f qcow2 "$@"; }

# build NAME IMG: make the image of that kind (in the current directory).
build () {
  local n=$1 img=$2
  case $n in
    cluster-*)
      mk -o cluster_size="${n#cluster-}" "$img" 64M && workload "$img" compress ;;
    refcount-bits-*)
      # Narrow refcounts cannot count many references: compressed
      # clusters share host clusters, snapshots add one reference each.
      local b=${n#refcount-bits-}
      mk -o refcount_bits="$b" "$img" 64M &&
      if [ "$b" -ge 16 ]; then
        workload "$img" compress && snapshots "$img"
      elif [ "$b" -ge 8 ]; then
        workload "$img" compress && snapshot1 "$img"
      elif [ "$b" -ge 2 ]; then
        workload "$img" && snapshot1 "$img"
      else
        workload "$img"
      fi ;;
    compat-0.10)
      mk -o compat=0.10 "$img" 64M && workload "$img" compress &&
      snapshots "$img" ;;
    compat-0.10-cluster-4k)
      mk -o compat=0.10,cluster_size=4k "$img" 64M && workload "$img" ;;
    extended-l2-*)
      mk -o extended_l2=on,cluster_size="${n#extended-l2-}" "$img" 64M &&
      workload "$img" compress && snapshots "$img" ;;
    compression-zlib)
      mk -o compression_type=zlib "$img" 64M && workload "$img" compress ;;
    compression-zstd)
      mk -o compression_type=zstd "$img" 64M && workload "$img" compress &&
      snapshots "$img" ;;
    snapshots)
      mk "$img" 64M && workload "$img" compress && snapshots "$img" ;;
    snapshots-vm-size-change)
      mk "$img" 64M && workload "$img" && qemu-img snapshot -c s1 "$img" &&
      qemu-img resize -q "$img" 2G &&
      qemu-io -f qcow2 -c 'write -P 1 1G 64k' "$img" >/dev/null ;;
    bitmaps)
      mk "$img" 64M && qemu-img bitmap --add "$img" b0 &&
      qemu-img bitmap --add -g 512k "$img" b1 &&
      workload "$img" &&
      qemu-img bitmap --disable "$img" b1 &&
      qemu-io -f qcow2 -c 'write -P 2 50M 1M' "$img" >/dev/null &&
      qemu-img bitmap --add "$img" b2 && qemu-img bitmap --disable "$img" b2 ;;
    backing-chain)
      mk base.qcow2 64M && workload base.qcow2 compress &&
      mk -b base.qcow2 -F qcow2 mid.qcow2 &&
      qemu-io -f qcow2 -c 'write -P 3 100k 8k' mid.qcow2 >/dev/null &&
      mk -b mid.qcow2 -F qcow2 "$img" &&
      qemu-io -f qcow2 -c 'write -P 4 1M 4k' -c 'write -z 0 64k' "$img" \
        >/dev/null ;;
    backing-raw)
      qemu-img create -q -f raw base.raw 64M &&
      mk -b base.raw -F raw "$img" && workload "$img" ;;
    data-file)
      mk -o data_file=data.raw "$img" 64M && workload "$img" ;;
    data-file-raw)
      mk -o data_file=data.raw,data_file_raw=on "$img" 64M &&
      workload "$img" ;;
    lazy-refcounts)
      mk -o lazy_refcounts=on "$img" 64M && workload "$img" compress ;;
    prealloc-metadata)
      mk -o preallocation=metadata "$img" 64M && workload "$img" ;;
    prealloc-falloc)
      mk -o preallocation=falloc "$img" 64M && workload "$img" ;;
    large-sparse)
      mk "$img" 1T &&
      qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 600G 64k' \
        -c 'write -P 3 1023G 128k' "$img" >/dev/null ;;
    large-2m-extended-l2)
      mk -o cluster_size=2M,extended_l2=on "$img" 4G &&
      qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 3G 1M' \
        -c 'write -c -P 3 1G 2M' "$img" >/dev/null ;;
    empty)
      mk "$img" 64M ;;
    empty-v2)
      mk -o compat=0.10 "$img" 64M ;;
    resized)
      mk "$img" 64M && workload "$img" && qemu-img resize -q "$img" 5G &&
      qemu-io -f qcow2 -c 'write -P 1 4G 64k' "$img" >/dev/null &&
      qemu-img resize -q --shrink "$img" 4G ;;
    converted)
      mk src.qcow2 64M && workload src.qcow2 compress &&
      qemu-img convert -q -O qcow2 -c src.qcow2 "$img" ;;
    amended-refcount-bits)
      mk "$img" 64M && workload "$img" compress && snapshots "$img" &&
      qemu-img amend -q -o refcount_bits=64 "$img" ;;
    amended-downgrade)
      mk "$img" 64M && workload "$img" && qemu-img snapshot -c s1 "$img" &&
      qemu-img amend -q -o compat=0.10 "$img" ;;
    *) echo "unknown image kind $n" >&2; return 1 ;;
  esac
}

kinds="empty empty-v2"
for c in 512 1k 2k 4k 8k 16k 32k 64k 128k 256k 512k 1M 2M; do
  kinds="$kinds cluster-$c"
done
for b in 1 2 4 8 16 32 64; do kinds="$kinds refcount-bits-$b"; done
kinds="$kinds compat-0.10 compat-0.10-cluster-4k extended-l2-16k extended-l2-64k
  extended-l2-2M compression-zlib compression-zstd snapshots
  snapshots-vm-size-change bitmaps backing-chain backing-raw data-file
  data-file-raw lazy-refcounts prealloc-metadata prealloc-falloc large-sparse
  large-2m-extended-l2 resized converted amended-refcount-bits
  amended-downgrade"

n=0
for k in $kinds; do
  if [ -n "${CHECK_CLEAN:-}" ] && ! [[ " $CHECK_CLEAN " == *" $k "* ]]; then
    continue
  fi
  n=$((n + 1))
  w=$T/$k
  mkdir -p "$w"
  img=$w/test.qcow2
  if ! (cd "$w" && build "$k" "$img") > "$w/build.log" 2>&1; then
    fail "$k: the image is built" "$(tail -n 3 "$w/build.log" | tr '\n' '|')"
    continue
  fi
  (cd "$w" && qcowkit check --output=json "$img") > "$w/ours.json" \
    2> "$w/ours.err"
  rc=$?
  (cd "$w" && qemu-img check --output=json "$img") > "$w/qemu.json" \
    2> "$w/qemu.err"
  qrc=$?
  is "$rc" 0 "$k: qcowkit check exits 0"
  is "$qrc" 0 "$k: qemu-img check exits 0"
  probs=$(jq -r '.problems[] | "\(.code) \(.message)"' "$w/ours.json" \
            2>/dev/null | head -n 5)
  is "$probs" "" "$k: qcowkit reports no problem"
  diffs=
  for f in $FIELDS; do
    a=$(jq ".[\"$f\"] // 0" "$w/ours.json" 2>/dev/null)
    b=$(jq ".[\"$f\"] // 0" "$w/qemu.json" 2>/dev/null)
    [ "$a" = "$b" ] || diffs="$diffs $f: ours ${a:-none}, qemu-img ${b:-none};"
  done
  if [ -z "$diffs" ]; then
    pass "$k: the same counts as qemu-img check"
  else
    fail "$k: the same counts as qemu-img check" "$diffs"
  fi
  if [ "$rc$qrc" != 00 ]; then
    diag "qcowkit: $(head -c 300 "$w/ours.err")"
    diag "qemu-img: $(head -c 300 "$w/qemu.err")"
  fi
done
ok "the matrix has at least 40 kinds of image ($n)" \
  test -n "${CHECK_CLEAN:-}" -o "$n" -ge 40
diag "$n images in $(( $(date +%s) - start )) s"
done_testing
