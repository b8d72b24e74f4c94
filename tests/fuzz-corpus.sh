#!/bin/bash
# `qcowkit fuzz-corpus`: every image it writes is valid by QEMU's word and
# holds what the builder's model says. For each image: `qemu-img check`
# finds no corruption, leak or check error; `qemu-img convert -O raw` is
# byte-identical to NAME.raw (--expected); each internal snapshot read by
# `qemu-img snapshot -a` on a copy + convert is identical to
# NAME.snap-S.raw, and `qemu-img convert -l snapshot.name=S` agrees with it
# (convert -l keeps the current virtual size: past a smaller snapshot's size
# it must read zeros); `qcowkit check` is clean and `qcowkit export` (with
# --snapshot too) is identical; `qemu-img info` reports the features the
# generator lists for the image. Images are under 64 KiB except the ones
# the man page names (64 KiB and 2 MiB clusters, extended L2). The
# generator is deterministic and refuses to overwrite without --force.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch
cd "$T" || exit 1

jqq () { jq -e "$@" > /dev/null; }
cmp_files () {  # DESCRIPTION GOT WANT
  if cmp -s "$2" "$3"; then
    pass "$1"
  else
    fail "$1" "$(cmp "$2" "$3" 2>&1 | head -1)"
  fi
}

qcowkit fuzz-corpus --expected --output=json c > corpus.json 2> gen.err
is "$?" 0 "fuzz-corpus --expected --output=json exits 0"
[ -s gen.err ] && sed 's/^/# /' gen.err
ok "its JSON is an array of {file, size, features}" \
  jqq 'type == "array" and length > 0 and
         all(.[]; (.file | type) == "string" and (.size | type) == "number"
                  and (.features | type) == "array")' corpus.json
listed=$(jq -r '.[].file' corpus.json | sort)
present=$(cd c && ls | sort)
is "$present" "$listed" "the JSON lists exactly the files written"
bad=$(jq -r '.[] | "\(.file) \(.size)"' corpus.json |
      while read -r f s; do
        [ "$(stat -c %s "c/$f")" = "$s" ] || echo "$f"
      done)
is "$bad" "" "the sizes in the JSON are the file sizes"

images=$(jq -r '.[].file | select(endswith(".qcow2"))' corpus.json)
n=$(echo "$images" | wc -l)
ok "at least 25 images ($n)" test "$n" -ge 25

# feat IMAGE KEY: the value of KEY=VALUE among IMAGE's features ("" if
# absent); has IMAGE FLAG: the feature FLAG is listed.
feat () {
  jq -r --arg f "$1" --arg k "$2=" '.[] | select(.file == $f) | .features[]
    | select(startswith($k)) | .[($k | length):]' "$T/corpus.json"
}
has () {
  jq -e --arg f "$1" --arg k "$2" \
    '.[] | select(.file == $f) | .features | index($k) != null' \
    "$T/corpus.json" > /dev/null
}

# every feature asked for is somewhere in the corpus
all=$(jq -r '[.[].features[]] | unique | .[]' corpus.json)
for want in compat=0.10 compat=1.1 cluster-size=512 cluster-size=4096 \
            cluster-size=65536 cluster-size=2097152 refcount-bits=1 \
            refcount-bits=2 refcount-bits=4 refcount-bits=8 refcount-bits=16 \
            refcount-bits=32 refcount-bits=64 extended-l2 subclusters \
            compression-type=zlib compression-type=zstd compressed \
            zero-clusters preallocated-zero-clusters resized \
            snapshot-unknown-extra-data snapshot-icount-disabled \
            snapshot-vm-state snapshot-no-extra-data bitmap-auto \
            bitmap-dirty-ranges lazy-refcounts dirty backing-no-format \
            backing-format=raw data-file-raw feature-name-table \
            unknown-extension unknown-compatible unknown-autoclear \
            header-length=128; do
  ok "the corpus has an image with $want" grep -qx -- "$want" <<< "$all"
done

cd c || exit 1
for f in $images; do
  b=${f%.qcow2}
  # ---- qemu-img check: exit 0, nothing found ----
  qemu-img check --output=json "$f" > "$T/check.json" 2> "$T/check.err"
  is "$?" 0 "$f: qemu-img check exits 0"
  if jq -e '(.corruptions // 0) == 0 and (.leaks // 0) == 0
            and (."check-errors" // 0) == 0 and (."leaks-fixed" // 0) == 0
            and (."corruptions-fixed" // 0) == 0' "$T/check.json" >/dev/null
  then
    pass "$f: qemu-img check finds no corruption, leak or error"
  else
    fail "$f: qemu-img check finds no corruption, leak or error" \
      "$(jq -c . "$T/check.json" 2>&1)" "$(head -3 "$T/check.err")"
  fi

  # ---- guest contents ----
  qemu-img convert -O raw "$f" "$T/q.raw"
  is "$?" 0 "$f: qemu-img convert exits 0"
  cmp_files "$f: qemu-img convert equals $b.raw" "$T/q.raw" "$b.raw"
  qcowkit check "$f" > "$T/qk.out" 2>&1
  r=$?
  is "$r" 0 "$f: qcowkit check is clean"
  [ "$r" = 0 ] || head -5 "$T/qk.out" | sed 's/^/#   /'
  qcowkit export "$f" "$T/x.raw"
  is "$?" 0 "$f: qcowkit export exits 0"
  cmp_files "$f: qcowkit export equals $b.raw" "$T/x.raw" "$b.raw"

  # ---- snapshots ----
  snaps=$(feat "$f" snapshot)
  while IFS= read -r s; do
    [ -n "$s" ] || continue
    want=$b.snap-$s.raw
    ok "$f: $want was written" test -f "$want"
    cp "$f" "$T/copy.qcow2"
    if qemu-img snapshot -a "$s" "$T/copy.qcow2" &&
       qemu-img convert -O raw "$T/copy.qcow2" "$T/a.raw"; then
      cmp_files "$f: snapshot -a '$s' + convert equals $want" "$T/a.raw" \
        "$want"
    else
      fail "$f: snapshot -a '$s' + convert"
    fi
    if qemu-img convert -l "snapshot.name=$s" -O raw "$f" "$T/l.raw"; then
      ns=$(stat -c %s "$want") nl=$(stat -c %s "$T/l.raw")
      if [ "$ns" = "$nl" ]; then
        cmp_files "$f: convert -l snapshot.name=$s equals $want" "$T/l.raw" \
          "$want"
      else
        m=$((ns < nl ? ns : nl))
        ok "$f: convert -l snapshot.name=$s equals $want on $m bytes" \
          cmp -s -n "$m" "$T/l.raw" "$want"
        if [ "$nl" -gt "$ns" ]; then
          ok "$f: convert -l '$s' past the snapshot's size is zeros" \
            cmp -s -i "$ns:0" -n $((nl - ns)) "$T/l.raw" /dev/zero
        else
          fail "$f: convert -l '$s' is shorter than the snapshot ($nl < $ns)"
        fi
      fi
    else
      fail "$f: qemu-img convert -l snapshot.name=$s"
    fi
    qcowkit export --snapshot "$s" "$f" "$T/xs.raw"
    is "$?" 0 "$f: qcowkit export --snapshot '$s' exits 0"
    cmp_files "$f: qcowkit export --snapshot '$s' equals $want" "$T/xs.raw" \
      "$want"
  done <<< "$snaps"
  nsnap=$(ls "$b".snap-*.raw 2>/dev/null | wc -l)
  is "$nsnap" "$(echo "$snaps" | grep -c .)" \
    "$f: one NAME.snap-S.raw per snapshot"

  # ---- qemu-img info: what was asked for ----
  qemu-img info --output=json "$f" > "$T/info.json"
  q () { jq -r "$1" "$T/info.json"; }
  is "$(q '."cluster-size"')" "$(feat "$f" cluster-size)" \
    "$f: cluster-size"
  is "$(q '."virtual-size"')" "$(feat "$f" virtual-size)" \
    "$f: virtual-size"
  is "$(q '."format-specific".data.compat')" "$(feat "$f" compat)" \
    "$f: compat"
  is "$(q '."format-specific".data."refcount-bits"')" \
    "$(feat "$f" refcount-bits)" "$f: refcount-bits"
  if [ "$(feat "$f" compat)" = 1.1 ]; then
    is "$(q '."format-specific".data."compression-type"')" \
      "$(feat "$f" compression-type)" "$f: compression-type"
    is "$(q '."format-specific".data."extended-l2"')" \
      "$(has "$f" extended-l2 && echo true || echo false)" "$f: extended-l2"
    is "$(q '."format-specific".data."lazy-refcounts"')" \
      "$(has "$f" lazy-refcounts && echo true || echo false)" \
      "$f: lazy-refcounts"
    is "$(q '."format-specific".data."data-file" // ""')" \
      "$(feat "$f" data-file)" "$f: data-file"
    is "$(q '."format-specific".data."data-file-raw" // false')" \
      "$(has "$f" data-file-raw && echo true || echo false)" \
      "$f: data-file-raw"
  fi
  is "$(q '[.snapshots[]?.name] | join(",")')" "$(echo "$snaps" | paste -sd,)" \
    "$f: snapshot names"
  is "$(q '[."format-specific".data.bitmaps[]?.name] | join(",")')" \
    "$(feat "$f" bitmap | paste -sd,)" "$f: bitmap names"
  is "$(q '."backing-filename" // ""')" "$(feat "$f" backing-filename)" \
    "$f: backing-filename"
  if has "$f" backing-no-format; then
    is "$(q '."backing-filename-format" // ""')" "" \
      "$f: no backing format recorded"
  elif [ -n "$(feat "$f" backing-format)" ]; then
    is "$(q '."backing-filename-format"')" "$(feat "$f" backing-format)" \
      "$f: backing-filename-format"
  fi
  if has "$f" bitmap-auto; then
    ok "$f: a bitmap has the auto flag" \
      jqq '[."format-specific".data.bitmaps[].flags[]] | index("auto")' \
      "$T/info.json"
  fi
  if has "$f" dirty; then
    ok "$f: the dirty bit is set (byte 79 of the header, bit 0)" \
      test "$(od -An -tu1 -j 79 -N 1 "$f" | tr -d ' ')" = 1
  fi
  hl=$(feat "$f" header-length)
  if [ -n "$hl" ]; then
    is "$(od -An -tu4 --endian=big -j 100 -N 4 "$f" | tr -d ' ')" "$hl" \
      "$f: header_length"
  fi

  # ---- size ----
  cs=$(feat "$f" cluster-size)
  sz=$(stat -c %s "$f")
  if [ "$cs" -ge 65536 ] || has "$f" extended-l2; then
    diag "$f: $sz bytes (64 KiB or 2 MiB clusters, or extended L2: exempt)"
  else
    ok "$f is under 64 KiB ($sz bytes)" test "$sz" -lt 65536
  fi
done
cd "$T" || exit 1

# ---- deterministic ----
qcowkit fuzz-corpus --expected c2 > human.out 2> gen2.err
is "$?" 0 "a second run into another directory exits 0"
is "$(cd c2 && ls | sort)" "$listed" "... writes the same files"
diff_files=
for f in $listed; do
  cmp -s "c/$f" "c2/$f" || diff_files="$diff_files $f"
done
is "$diff_files" "" "... with the same bytes"
is "$(wc -l < human.out)" "$(echo "$listed" | wc -l)" \
  "human output: one line per file"
ok "human output: each line is a size and a file name" \
  awk 'NF != 2 || $1 !~ /^[0-9]+$/ { exit 1 }' human.out
while read -r s f; do
  [ "$(stat -c %s "c2/$f")" = "$s" ] || { fail "human output: size of $f"; break; }
done < human.out

# ---- without --expected: only the images and the files they need ----
qcowkit fuzz-corpus c3 > /dev/null
is "$?" 0 "without --expected exits 0"
is "$(cd c3 && ls | grep -c '\.raw$')" 0 "... and writes no .raw file"
ok "... but every image" test "$(cd c3 && ls | grep -c '\.qcow2$')" = "$n"

# ---- overwriting ----
before=$(cd c && sha256sum -- * | sha256sum)
qcowkit fuzz-corpus --expected c > /dev/null 2> err.txt
is "$?" 1 "into a directory with the files: exit 1"
ok "... saying which file exists and about --force" \
  grep -q 'exists.*--force' err.txt
is "$(cd c && sha256sum -- * | sha256sum)" "$before" "... nothing changed"
echo junk > c2/v3-c4k-rc16.qcow2
qcowkit fuzz-corpus --expected --force c2 > /dev/null
is "$?" 0 "--force overwrites: exit 0"
cmp_files "--force rewrote the file" c2/v3-c4k-rc16.qcow2 c/v3-c4k-rc16.qcow2

# ---- usage ----
qcowkit fuzz-corpus > /dev/null 2>&1
is "$?" 2 "no directory: exit 2"
qcowkit fuzz-corpus --bogus d > /dev/null 2>&1
is "$?" 2 "unknown option: exit 2"
qcowkit fuzz-corpus a b > /dev/null 2>&1
is "$?" 2 "two directories: exit 2"
qcowkit fuzz-corpus --help | grep -q -- --expected
ok "--help describes --expected" test "${PIPESTATUS[0]}" = 0
touch notadir
qcowkit fuzz-corpus notadir > /dev/null 2>&1
is "$?" 1 "a file where the directory should be: exit 1"

done_testing
