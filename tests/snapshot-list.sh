#!/bin/bash
# `qcowkit snapshot list` against `qemu-img snapshot -l` (identical text,
# with TZ fixed, in two time zones) and against the snapshots of
# `qemu-img info --output=json` (our snapshot list JSON and our info's
# snapshots must have qemu-img's fields and values, in the same order).
# The images: the snapshots of the matrix, many snapshots with deleted ones
# (IDs with gaps, two-digit IDs), long, spaced, UTF-8 and numeric names,
# compat 0.10, and table entries poked to carry a VM state size, a VM clock
# (hours past 99), a disabled icount and extreme dates.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch

cd "$T" || exit 1

# be_get FILE OFFSET BYTES: a big-endian unsigned integer from FILE
be_get () {
  local v=0 b
  for b in $(od -An -tu1 -j "$2" -N "$3" "$1"); do v=$(( (v << 8) | b )); done
  echo "$v"
}
# be_put FILE OFFSET BYTES VALUE: write a big-endian integer into FILE
be_put () {
  local s="" k
  for ((k = $3 - 1; k >= 0; k--)); do
    s="$s$(printf '\\%03o' $(( ($4 >> (8 * k)) & 255 )))"
  done
  printf "$s" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# snap_entry FILE N: the file offset of snapshot table entry N
snap_entry () {
  local off n=0 extra idl nml
  off=$(be_get "$1" 64 8)
  while [ $n -lt "$2" ]; do
    idl=$(be_get "$1" $((off + 12)) 2)
    nml=$(be_get "$1" $((off + 14)) 2)
    extra=$(be_get "$1" $((off + 36)) 4)
    off=$(( (off + 40 + extra + idl + nml + 7) / 8 * 8 ))
    n=$((n + 1))
  done
  echo "$off"
}

# --- the images ----------------------------------------------------------
# (not in a || list: that would turn off the set -e inside build_matrix)
build_matrix "$T/m"
[ $? -eq 0 ] || { fail "build the image matrix"; done_testing; exit 1; }
imgs=()
while IFS=$'\t' read -r -a f; do
  [ ${#f[@]} -gt 1 ] && imgs+=("m/${f[0]}")
done < m/MANIFEST
imgs+=(m/cs64k.qcow2)   # none: no output at all

# many snapshots, some deleted, odd names
qemu-img create -q -f qcow2 -o cluster_size=4k many.qcow2 1M
for n in $(seq 1 12); do
  mx_io many.qcow2 "write -P $n $((n * 4096)) 4k"
  qemu-img snapshot -c "snap-$n" many.qcow2
done
qemu-img snapshot -d snap-3 many.qcow2
qemu-img snapshot -d snap-12 many.qcow2
qemu-img snapshot -c 'a rather long snapshot name, longer than its column' many.qcow2
qemu-img snapshot -c 'with  two  spaces' many.qcow2
qemu-img snapshot -c 'snäpshøt ünïcode' many.qcow2
qemu-img snapshot -c 3 many.qcow2            # a name that is another's ID
imgs+=(many.qcow2)

qemu-img create -q -f qcow2 -o compat=0.10 old.qcow2 1M
qemu-img snapshot -c old-1 old.qcow2
qemu-img snapshot -c old-2 old.qcow2
imgs+=(old.qcow2)

# poked table entries (nothing else checks these fields)
qemu-img create -q -f qcow2 poked.qcow2 1M
for n in 1 2 3 4; do qemu-img snapshot -c "p$n" poked.qcow2; done
e=$(snap_entry poked.qcow2 0)
be_put poked.qcow2 $((e + 32)) 4 123456789           # vm_state_size
be_put poked.qcow2 $((e + 40)) 8 123456789           # vm_state_size_large
be_put poked.qcow2 $((e + 24)) 8 3723456789012       # 01:02:03.456
be_put poked.qcow2 $((e + 56)) 8 0xffffffffffffffff  # icount disabled
be_put poked.qcow2 $((e + 16)) 4 0                   # 1970-01-01
be_put poked.qcow2 $((e + 20)) 4 999999999
e=$(snap_entry poked.qcow2 1)
be_put poked.qcow2 $((e + 32)) 4 5000
be_put poked.qcow2 $((e + 40)) 8 5000
be_put poked.qcow2 $((e + 24)) 8 360005000000000     # 100:00:05.000
be_put poked.qcow2 $((e + 56)) 8 42
be_put poked.qcow2 $((e + 16)) 4 0x7fffffff          # 2038
e=$(snap_entry poked.qcow2 2)
be_put poked.qcow2 $((e + 32)) 4 0
be_put poked.qcow2 $((e + 40)) 8 $((5 << 30))        # 5 GiB, past 32 bits
be_put poked.qcow2 $((e + 24)) 8 86399999999999      # 23:59:59.999
be_put poked.qcow2 $((e + 16)) 4 0xfffffffe          # past 2038 (u32)
e=$(snap_entry poked.qcow2 3)
be_put poked.qcow2 $((e + 40)) 8 1023
be_put poked.qcow2 $((e + 24)) 8 3600000000000000    # 1000 hours
be_put poked.qcow2 $((e + 56)) 8 123456789012
be_put poked.qcow2 $((e + 16)) 4 1700000000          # a DST-sensitive date
imgs+=(poked.qcow2)
is "$(qemu-img snapshot -l poked.qcow2 | grep -c '^[0-9]')" 4 \
  "poked.qcow2: qemu-img still lists its snapshots"

# --- the comparisons --------------------------------------------------------
for i in "${imgs[@]}"; do
  for tz in UTC America/New_York; do
    TZ=$tz qemu-img snapshot -l "$i" > "$T/q.txt" 2> "$T/q.err"
    TZ=$tz qcowkit snapshot list "$i" > "$T/o.txt" 2> "$T/o.err"
    is "$?" 0 "$i: snapshot list exits 0 (TZ=$tz)"
    if cmp -s "$T/q.txt" "$T/o.txt"; then
      pass "$i: snapshot list is qemu-img snapshot -l's text (TZ=$tz)"
    else
      fail "$i: snapshot list is qemu-img snapshot -l's text (TZ=$tz)" \
        "$(diff "$T/q.txt" "$T/o.txt" | head -12)"
    fi
  done

  # the same table inside info's human output
  TZ=UTC qemu-img info "$i" | sed -n '/^Snapshot list:/,/^[^0-9IS]/p' |
    grep -v '^Format specific' > "$T/q.txt"
  TZ=UTC qcowkit info "$i" 2>/dev/null | sed -n '/^Snapshot list:/,/^[^0-9IS]/p' |
    grep -v '^Format specific' > "$T/o.txt"
  if cmp -s "$T/q.txt" "$T/o.txt"; then
    pass "$i: info's snapshot table is qemu-img info's"
  else
    fail "$i: info's snapshot table is qemu-img info's" \
      "$(diff "$T/q.txt" "$T/o.txt" | head -12)"
  fi

  qemu-img info --output=json "$i" | jq '.snapshots // []' > "$T/q.json"
  qcowkit snapshot list --output=json "$i" > "$T/o.json" 2> "$T/o.err"
  is "$?" 0 "$i: snapshot list --output=json exits 0"
  ok "$i: snapshot list JSON has qemu-img info's snapshot fields and values" \
    json_superset "$T/q.json" "$T/o.json"
  qcowkit info --output=json "$i" | jq '.snapshots // []' > "$T/o.json"
  ok "$i: info JSON snapshots have qemu-img's fields and values" \
    json_superset "$T/q.json" "$T/o.json"
done

# The extra fields of our list: the disk size each snapshot was taken at
# (snap.qcow2 was resized between its snapshots: 4M, 6M, 5M)
is "$(qcowkit snapshot list --output=json m/snap.qcow2 | jq -c '[.[]."disk-size"]')" \
  "[4194304,6291456,5242880]" "disk-size of snapshots around resizes"

# No snapshots: no output, exit 0 (as qemu-img)
out=$(qcowkit snapshot list m/cs64k.qcow2)
is "$?:$out" "0:" "no snapshots: empty output, exit 0"
is "$(qcowkit snapshot list --output=json m/cs64k.qcow2 | jq -c .)" "[]" \
  "no snapshots: JSON []"

# Not a qcow2 image: exit 1
qcowkit snapshot list m/chain2/base.raw > /dev/null 2> "$T/o.err"
is "$?" 1 "a raw image: snapshot list exits 1"

done_testing
