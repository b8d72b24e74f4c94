#!/bin/bash
# Backing chains: info --backing-chain, map and export against qemu-img for
# relative names in subdirectories (called from several working
# directories), absolute names, raw backing files and backing files smaller
# than their overlays; then the broken chains: a missing backing file, a
# loop, json:/protocol names, a chain leaving --root; relative external
# data file names; a backing format that is not stored but probed. Exit
# codes: 0 ok, 1 error.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch

# A command must not hang on a broken chain.
tmo () { timeout 30 "$@"; }

# compare_all DESC IMG: run from the current directory, IMG named as given.
# info --backing-chain (superset), map (equal), export (identical).
compare_all () {
  local d=$1 i=$2
  qemu-img info --backing-chain --output=json "$i" > "$T/q.json"
  tmo qcowkit info --backing-chain --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "$d: info --backing-chain exits 0"
  [ -s "$T/o.err" ] && diag "stderr: $(cat "$T/o.err")"
  ok "$d: info --backing-chain: as many images as qemu-img" \
    json_eq length "$T/q.json" "$T/o.json"
  ok "$d: info --backing-chain has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  qemu-img map --output=json "$i" > "$T/q.json"
  tmo qcowkit map --output=json "$i" > "$T/o.json"
  ok "$d: map equals qemu-img's" \
    json_eq 'map(del(.compressed))' "$T/q.json" "$T/o.json"
  rm -f "$T/q.raw" "$T/o.raw"
  qemu-img convert -O raw "$i" "$T/q.raw"
  tmo qcowkit export "$i" "$T/o.raw"
  if cmp -s "$T/q.raw" "$T/o.raw"; then
    pass "$d: export equals qemu-img convert"
  else
    fail "$d: export equals qemu-img convert" "$(cmp "$T/q.raw" "$T/o.raw" 2>&1)"
  fi
}

# --- 1. three deep, relative names in subdirectories -------------------
# c1/base.qcow2 <- c1/d1/mid.qcow2 ("../base.qcow2")
#               <- c1/d1/d2/top.qcow2 ("../mid.qcow2")
mkdir -p "$T/c1/d1/d2" "$T/c1/d3"
cd "$T/c1" || exit 1
qemu-img create -q -f qcow2 base.qcow2 4M
mx_io base.qcow2 'write -P 0x11 0 4M'
qemu-img create -q -f qcow2 -o cluster_size=4k -b ../base.qcow2 -F qcow2 \
  d1/mid.qcow2 4M
mx_io d1/mid.qcow2 'write -P 0x22 64k 100k' 'write -z 1M 8k' 'discard 2M 64k'
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k \
  -b ../mid.qcow2 -F qcow2 d1/d2/top.qcow2 4M
mx_io d1/d2/top.qcow2 'write -P 0x33 70k 3k' 'write -z 1M 2k' \
  'write -z -u 3M 64k' 'write -P 0x34 2M 1k'
# an absolute backing name
qemu-img create -q -f qcow2 -b "$T/c1/d1/mid.qcow2" -F qcow2 d3/abs.qcow2 4M
mx_io d3/abs.qcow2 'write -P 0x35 512k 4k'
settle .   # see tests/functions.sh

cd "$T" && compare_all "from the top directory" c1/d1/d2/top.qcow2
cd "$T/c1" && compare_all "with ./" ./d1/d2/top.qcow2
cd "$T/c1/d1/d2" && compare_all "from the image's directory" top.qcow2
cd "$T/c1/d1" && compare_all "through .." ../d1/d2/top.qcow2
cd "$T/c1" && compare_all "absolute path" "$T/c1/d1/d2/top.qcow2"
cd "$T/c1" && compare_all "absolute backing name" d3/abs.qcow2
cd "$T" || exit 1

# A symlink to the top image: QEMU combines names with the name given, not
# the link's target, so from the link's directory "../mid.qcow2" is not
# there; qcowkit does the same.
ln -s c1/d1/d2/top.qcow2 "$T/link.qcow2"
qemu-img map link.qcow2 >/dev/null 2>&1
is "$?" 1 "symlinked top: qemu-img map fails (the backing is looked up beside the link)"
qcowkit map link.qcow2 >/dev/null 2>&1
is "$?" 1 "symlinked top: qcowkit map fails the same way"

# --- 2. a raw backing file --------------------------------------------
mkdir -p "$T/c2/sub"
cd "$T/c2" || exit 1
head -c 1M /dev/zero | tr '\0' '\125' > base.img
truncate -s 2M base.img            # a hole at the end
printf 'tail' >> base.img          # and a size that is not a multiple of 512
qemu-img create -q -f qcow2 -b base.img -F raw mid.qcow2 3M
mx_io mid.qcow2 'write -P 0x44 512k 64k' 'write -z 0 4k'
qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 sub/top.qcow2 3M
mx_io sub/top.qcow2 'write -P 0x45 2M 4k'
settle .
compare_all "raw base" sub/top.qcow2
compare_all "raw base, directly below" mid.qcow2
cd "$T" || exit 1

# --- 3. backing files smaller than their overlays ----------------------
# base 1 MiB of 0xff <- mid (4 MiB) <- top (6 MiB); and a middle image
# smaller than its base: what lies past the middle's end reads as zeros,
# even where the base has data.
mkdir -p "$T/c3"
cd "$T/c3" || exit 1
qemu-img create -q -f qcow2 base.qcow2 1M
mx_io base.qcow2 'write -P 0xff 0 1M'
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 4M
mx_io mid.qcow2 'write -P 0x55 1020k 8k'
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M
mx_io top.qcow2 'write -P 0x56 5M 4k'
qemu-img create -q -f qcow2 big.qcow2 4M
mx_io big.qcow2 'write -P 0xee 0 4M'
qemu-img create -q -f qcow2 -b big.qcow2 -F qcow2 small.qcow2 1M
qemu-img create -q -f qcow2 -b small.qcow2 -F qcow2 over.qcow2 4M
mx_io over.qcow2 'write -P 0x57 3M 4k'
settle .
compare_all "smaller backing files" top.qcow2
compare_all "a middle image smaller than its base" over.qcow2
qcowkit export top.qcow2 "$T/o.raw"
ok "past the base's end, guest reads are zeros" \
  cmp -s -i 1028k:0 -n $((5 * 1048576 - 1028 * 1024)) "$T/o.raw" /dev/zero
qcowkit export over.qcow2 "$T/o.raw"
ok "past a middle image's end, the base's data is not seen" \
  cmp -s -i 1M:0 -n 2M "$T/o.raw" /dev/zero
cd "$T" || exit 1

# --- 4. a missing backing file ------------------------------------------
mkdir -p "$T/c4"
cd "$T/c4" || exit 1
qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 top.qcow2 1M
qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 1M
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top2.qcow2 1M
rm base.qcow2                     # missing further down
settle .
for i in top.qcow2 top2.qcow2; do
  gone=$([ $i = top.qcow2 ] && echo gone.qcow2 || echo base.qcow2)
  qemu-img info --output=json "$i" > "$T/q.json"
  tmo qcowkit info --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "missing backing ($i): info without --backing-chain exits 0"
  ok "missing backing ($i): info has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  tmo qcowkit info --backing-chain "$i" > /dev/null 2> "$T/o.err"
  is "$?" 1 "missing backing ($i): info --backing-chain exits 1"
  ok "... naming $gone" grep -q "'$gone'" "$T/o.err"
  tmo qcowkit map "$i" > /dev/null 2> "$T/o.err"
  is "$?" 1 "missing backing ($i): map exits 1"
  ok "... saying the backing file cannot be opened" \
    grep -q "'$gone'.*No such file" "$T/o.err"
  tmo qcowkit export "$i" "$T/o.raw" 2> "$T/o.err"
  is "$?" 1 "missing backing ($i): export exits 1"
  ok "... saying the backing file cannot be opened" \
    grep -q "'$gone'.*No such file" "$T/o.err"
  qemu-img map "$i" >/dev/null 2>&1
  is "$?" 1 "missing backing ($i): qemu-img map exits 1 too"
done
cd "$T" || exit 1

# --- 5. loops -----------------------------------------------------------
# a -> b -> a (made with rebase -u); c -> c; d -> ./d.qcow2 (another
# spelling of itself). qemu-img info --backing-chain reports the loop, but
# qemu-img map and convert hang on it, so they are not run here.
mkdir -p "$T/c5"
cd "$T/c5" || exit 1
qemu-img create -q -f qcow2 a.qcow2 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 1M
qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
qemu-img create -q -f qcow2 c.qcow2 1M
qemu-img rebase -u -b c.qcow2 -F qcow2 c.qcow2
qemu-img create -q -f qcow2 d.qcow2 1M
qemu-img rebase -u -b ./d.qcow2 -F qcow2 d.qcow2
settle .
for i in a.qcow2 c.qcow2 d.qcow2; do
  qemu-img info --output=json "$i" > "$T/q.json"
  tmo qcowkit info --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "loop ($i): info without --backing-chain exits 0"
  ok "loop ($i): info has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  qemu-img info --backing-chain "$i" > /dev/null 2>&1
  is "$?" 1 "loop ($i): qemu-img info --backing-chain exits 1"
  tmo qcowkit info --backing-chain "$i" > /dev/null 2> "$T/o.err"
  is "$?" 1 "loop ($i): info --backing-chain exits 1"
  ok "... and says it is a loop" grep -q loop "$T/o.err"
  tmo qcowkit map "$i" > /dev/null 2> "$T/o.err"
  is "$?" 1 "loop ($i): map exits 1 (no hang)"
  ok "... and says it is a loop" grep -q loop "$T/o.err"
  tmo qcowkit export "$i" "$T/o.raw" 2> "$T/o.err"
  is "$?" 1 "loop ($i): export exits 1 (no hang)"
  ok "... and says it is a loop" grep -q loop "$T/o.err"
done
cd "$T" || exit 1

# --- 6. json: and protocol backing names are refused ---------------------
# QEMU would open them (json: here names a local file; nbd:// a server).
# qcowkit opens only local files named by a path: the name is shown, its
# full name is the name itself (as qemu-img shows it), and reading refuses.
mkdir -p "$T/c6"
cd "$T/c6" || exit 1
qemu-img create -q -f qcow2 base.qcow2 1M
n=0
for b in 'json:{"driver":"qcow2","file":{"driver":"file","filename":"base.qcow2"}}' \
         'nbd://localhost:10809/export' 'file:base.qcow2'; do
  n=$((n + 1))
  qemu-img create -q -f qcow2 p$n.qcow2 1M
  qemu-img rebase -u -b "$b" -F qcow2 p$n.qcow2
  settle .
  is "$(qemu-img info --output=json p$n.qcow2 | jq -r '."backing-filename"')" \
    "$b" "backing name '$b' written"
  qemu-img info --output=json p$n.qcow2 > "$T/q.json"
  tmo qcowkit info --output=json p$n.qcow2 > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "'$b': info without --backing-chain exits 0"
  ok "'$b': info has qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  tmo qcowkit info --backing-chain p$n.qcow2 > /dev/null 2> "$T/o.err"
  is "$?" 1 "'$b': info --backing-chain exits 1"
  tmo qcowkit map p$n.qcow2 > /dev/null 2> "$T/o.err"
  is "$?" 1 "'$b': map exits 1"
  ok "... saying protocol and json: names are not opened" \
    grep -q 'is a protocol or json: specification' "$T/o.err"
  tmo qcowkit export p$n.qcow2 "$T/o.raw" 2> "$T/o.err"
  is "$?" 1 "'$b': export exits 1"
  ok "... saying protocol and json: names are not opened" \
    grep -q 'is a protocol or json: specification' "$T/o.err"
done
cd "$T" || exit 1

# --- 7. --root confines the chain -----------------------------------------
tmo qcowkit map --root c1/d1 c1/d1/d2/top.qcow2 > /dev/null 2> "$T/o.err"
is "$?" 1 "--root: a backing file outside the root is refused (exit 1)"
ok "... saying where it resolves" grep -q 'resolves outside' "$T/o.err"
tmo qcowkit map --root c1 c1/d1/d2/top.qcow2 > /dev/null 2> "$T/o.err"
is "$?" 0 "--root: a chain inside the root is read (exit 0)"

# --- 8. no backing format in the header (the format is probed) -----------
# qemu-img 7.2 no longer writes such images, so the backing format
# extension (the first one, at offset 112) gets an unknown magic. qemu-img
# then shows no "backing-filename-format"; neither does qcowkit (it puts
# the probed format in .qcowkit."backing-format-probed").
mkdir -p "$T/c9/sub"
cd "$T/c9" || exit 1
qemu-img create -q -f qcow2 base.qcow2 2M
mx_io base.qcow2 'write -P 0x77 0 1M'
head -c 2M /dev/zero | tr '\0' '\170' > base.raw
n=0
for b in base.qcow2 base.raw; do
  n=$((n + 1))
  qemu-img create -q -f qcow2 -b ../$b -F "${b#base.}" sub/top$n.qcow2 2M
  mx_io sub/top$n.qcow2 'write -P 0x78 64k 4k'
  is "$(od -An -tx1 -j112 -N4 sub/top$n.qcow2 | tr -d ' ')" e2792aca \
    "unprobed $b: the backing format extension is at 112"
  printf '\x12\x34\x56\x78' |
    dd of=sub/top$n.qcow2 bs=1 seek=112 conv=notrunc status=none
  settle .
  compare_all "probed $b" sub/top$n.qcow2
  ok "probed $b: no backing-filename-format, as qemu-img" \
    json_eq '[.[] | has("backing-filename-format")]' \
      <(qemu-img info --backing-chain --output=json sub/top$n.qcow2) \
      <(qcowkit info --backing-chain --output=json sub/top$n.qcow2 2>/dev/null)
  is "$(qcowkit info --backing-chain --output=json sub/top$n.qcow2 2>/dev/null |
        jq -r '.[0].qcowkit."backing-format-probed"')" "${b#base.}" \
    "probed $b: the probed format is shown apart"
done
cd "$T" || exit 1

# --- 9. external data file names -----------------------------------------
# qemu-img 7.2 opens a relative data file name relative to its working
# directory; qcowkit resolves it relative to the image's directory, like a
# backing file name (DESIGN: relative paths are resolved against the image's
# directory). Called from the image's directory the two agree; from
# elsewhere qemu-img cannot find the data file, and qcowkit still reads the
# same bytes.
mkdir -p "$T/c8/sub"
cd "$T/c8/sub" || exit 1
qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 1M
mx_io img.qcow2 'write -P 0x66 4k 8k' 'write -z 64k 64k'
settle .
qemu-img convert -O raw img.qcow2 "$T/q.raw"
qemu-img map --output=json img.qcow2 > "$T/q.json"
cd "$T/c8" || exit 1
qemu-img map sub/img.qcow2 > /dev/null 2>&1
is "$?" 1 "data file: qemu-img looks for 'img.data' in its working directory"
qcowkit export sub/img.qcow2 "$T/o.raw"
ok "data file: qcowkit finds it beside the image; export equals qemu-img's" \
  cmp -s "$T/q.raw" "$T/o.raw"
qcowkit map --output=json sub/img.qcow2 > "$T/o.json"
ok "data file: map from elsewhere equals qemu-img's from the image's directory" \
  json_eq 'map(del(.compressed))' "$T/q.json" "$T/o.json"
# A compressed cluster entry in an image with a data file: QEMU refuses
# to read it (EIO: "Compressed cluster entry found in image with external
# data file"), and so does qcowkit, instead of reading bytes of the image
# file there (which the checker counts as nobody's, so a repair could
# write over them: tests/regress/repair-compressed-data-file.gz).
# The entry points at valid deflate data in the image file (64 KiB of
# 0x77 at 0x50000), which a reader that did not refuse would return.
if have python3 "data file, compressed entry (the deflate data is made with python3)"; then
  cp sub/img.qcow2 sub/cz.qcow2
  l2=$(( $(qkpoke sub/cz.qcow2 peek "$(qkpoke sub/cz.qcow2 peek 40 be64)" be64) & 0x00fffffffffffe00 ))
  entry=$(python3 -c '
import sys, zlib
c = zlib.compressobj(9, zlib.DEFLATED, -15)
z = c.compress(b"\x77" * 65536) + c.flush()
with open(sys.argv[1], "r+b") as f:
    f.seek(0x50000); f.write(z)
nsec = ((0x50000 + len(z) - 1) >> 9) - (0x50000 >> 9)
print(hex(1 << 62 | nsec << 54 | 0x50000))' sub/cz.qcow2)
  qkpoke sub/cz.qcow2 "$l2" be64 "$entry"
  (cd sub && qemu-io -r -f qcow2 -c 'read 0 4k' cz.qcow2) > "$T/q.out" 2>&1
  grep -q 'Input/output error' "$T/q.out"
  is "$?" 0 "data file, compressed entry: qemu-io's read fails with EIO"
  qcowkit export sub/cz.qcow2 "$T/o.raw" 2> "$T/o.err"
  is "$?" 1 "data file, compressed entry: qcowkit export fails too (exit 1)"
  ok "... saying why" grep -q 'compressed cluster entry for guest offset 0x0 in an image with an external data file' "$T/o.err"
fi
rm sub/img.data
qcowkit export sub/img.qcow2 "$T/o.raw" 2> "$T/o.err"
is "$?" 1 "data file missing: export exits 1"
ok "... naming it" grep -q "'img.data'" "$T/o.err"
qcowkit info sub/img.qcow2 > /dev/null 2>&1
is "$?" 0 "data file missing: info still exits 0"
cd "$T" || exit 1

done_testing
