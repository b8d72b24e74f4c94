#!/bin/bash
# Generated trees from 1 to 16,384 snapshots (chains and binary trees), in
# both layouts: they load completely, check clean, keep their shape and
# current snapshot, convert both ways; a bulk file of 16,384 snapshots with
# large domains loads in bounded memory.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq
scratch

Q () { qcowkit meta "$1" --libvirt-root "$R" "${@:2}"; }
for n in 1 2 3 17 1000 16384; do
  for shape in chain binary; do
    [ $n -le 2 ] && [ $shape = binary ] && continue
    for lay in per-file bulk; do
      R=$T/$n-$shape-$lay
      meta_gen "$R" d $n $lay $shape
      Q check d --no-images --output=json > "$T/c.json"; rc=$?
      is "$rc $(problems "$T/c.json") $(jq -r '(.snapshots.count|tostring) + " " + .snapshots.current + " " + .snapshots.layout' "$T/c.json")" \
        "0  $n s$((n - 1)) $lay" "$n snapshots, $shape, $lay: all loaded, clean, current s$((n - 1))"
      if [ $n -le 1000 ]; then
        Q tree --output=json d > "$T/t.json"
        if [ $shape = chain ]; then
          want=$(seq 1 $((n - 1)) | awk '{printf "s%d>s%d\n", $1, $1 - 1}' | sort)
        else
          want=$(seq 1 $((n - 1)) | awk '{printf "s%d>s%d\n", $1, int(($1 - 1) / 2)}' | sort)
        fi
        is "$(jq -r '.snapshots.moments[] | select(.parent) | .name + ">" + .parent' "$T/t.json" | sort)" \
          "$want" "$n, $shape, $lay: every parent link"
      fi
      rm -rf "$R"
    done
  done
done

# conversions of the largest tree, both ways
R=$T/big
meta_gen "$R" d 16384 per-file binary
before=$(Q tree --output=json d | jq -c .snapshots)
convert () { Q convert "$@" > /dev/null; }
ok "16384 snapshots: per-file -> bulk" convert d --to bulk --no-backup
is "$(Q tree --output=json d | jq -c '.snapshots | .layout = "per-file"')" "$before" "the same tree and current in the bulk file"
ok "16384 snapshots: bulk -> per-file" convert d --to per-file --no-backup
is "$(Q tree --output=json d | jq -c .snapshots)" "$before" "and back"
is "$(ls "$R/lib/qemu/snapshot/d" | wc -l)" 16384 "16384 files again"
rm -rf "$R"

# bounded memory: 16384 snapshots with ~10 KiB domains (170 MiB bulk file)
# against the same with tiny domains; peak RSS must not follow the size
if have /usr/bin/time "bounded memory (GNU time, Debian package time)"; then
  R=$T/small; meta_gen "$R" d 16384 bulk chain 0
  /usr/bin/time -f %M -o "$T/rss1" qcowkit meta check --libvirt-root "$R" d --no-images > /dev/null
  rm -rf "$R"
  R=$T/large; meta_gen "$R" d 16384 bulk chain 100
  sz=$(stat -c %s "$R/lib/qemu/snapshot/d.xml")
  /usr/bin/time -f %M -o "$T/rss2" qcowkit meta check --libvirt-root "$R" d --no-images > "$T/out"
  rc=$?
  rm -rf "$R"
  r1=$(cat "$T/rss1") r2=$(cat "$T/rss2")
  diag "bulk file of $((sz >> 20)) MiB: peak RSS $((r2 / 1024)) MiB (tiny domains: $((r1 / 1024)) MiB)"
  is "$rc" 0 "a $((sz >> 20)) MiB bulk file (over seed 002's 128 MiB cap) loads and checks clean"
  if grep -q '^SAN_CFLAGS = .*sanitize' "${top_builddir:-.}/Makefile" 2>/dev/null; then
    # ASan's shadow memory and quarantine make RSS meaningless
    ok "peak RSS stays under 1 GiB (sanitizer build)" test "$r2" -lt 1048576
    ok "and within 64 MiB of the tiny-domain file's (sanitizer build)" test $((r2 - r1)) -lt 65536
  else
    ok "peak RSS stays under 64 MiB" test "$r2" -lt 65536
    ok "and within 16 MiB of the tiny-domain file's" test $((r2 - r1)) -lt 16384
  fi
fi
done_testing
