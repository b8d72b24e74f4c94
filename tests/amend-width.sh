#!/bin/bash
# qcowkit amend --refcount-bits against qemu-img amend -o refcount_bits=,
# on images whose refcount structure has many blocks (512 B and 4 KiB
# clusters: a refcount block covers 64 to 32,768 clusters), so that a new
# block is made from several old ones (a narrower width) or an old block
# feeds several new ones (a wider width): every width from 1 to 64 bits
# to every other, from images with snapshots (refcounts 2 and 3) and
# without. Where both succeed: qemu-img check is clean on ours, the guest
# data is the original's and qemu-img's result's (qemu-img compare), qemu-img
# info says the width asked, and a second amend changes nothing. Where
# both refuse: qemu-img's reason in ours, and our file untouched. Then
# leaked clusters, inside the file (freed on the way) and past its end
# (left out), and a round trip down to 1 bit and back.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq qkpoke
scratch
cd "$T" || exit 1

# (one process: sha256sum's " -" is cut by the shell)
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
bits () { qemu-img info --output=json "$1" | jq -r '.["format-specific"].data["refcount-bits"]'; }
qcheck () { qemu-img check "$1" > /dev/null 2>&1; echo $?; }
qio () { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
         qemu-io -f qcow2 "${a[@]}" "$f" > /dev/null; }

mk () {  # mk FILE CLUSTER BITS SNAPSHOTS
  qemu-img create -q -f qcow2 -o cluster_size="$2",refcount_bits="$3" "$1" 8M
  qio "$1" 'write -P 1 0 3M' 'write -P 2 5M 512k' 'write -z 7M 64k'
  if [ "$4" -gt 0 ]; then
    qemu-img snapshot -c s1 "$1"
    qio "$1" 'write -P 3 1M 256k'
  fi
  if [ "$4" -gt 1 ]; then
    qemu-img snapshot -c s2 "$1"
    qio "$1" 'write -P 4 6M 128k'
  fi
}

amend_both () {  # amend_both WHAT ORIG WIDTH
  local what=$1 orig=$2 w=$3 kr qr osha qmsg s1
  cp "$orig" k.qcow2; cp "$orig" q.qcow2
  osha=$(sha "$orig")
  qcowkit amend --refcount-bits="$w" k.qcow2 > k.out 2>&1; kr=$?
  qemu-img amend -o refcount_bits="$w" q.qcow2 > q.out 2>&1; qr=$?
  if [ "$kr" -ne 0 ] && [ "$qr" -ne 0 ]; then
    qmsg=$(sed -n 's/^qemu-img: //p' q.out | head -1)
    if [ -n "$qmsg" ] && grep -qF -- "$qmsg" k.out; then
      pass "$what: both refuse: $qmsg"
    else
      fail "$what: both refuse, for the same reason" "ours: $(head -2 k.out)" "qemu-img: $(head -2 q.out)"
    fi
    is "$(sha k.qcow2)" "$osha" "$what: the refusal leaves the file untouched"
    return
  fi
  is "$kr" "$qr" "$what: exit status as qemu-img amend ($(head -c 200 q.out))"
  [ "$kr" -eq 0 ] && [ "$qr" -eq 0 ] || { diag "ours: $(head -3 k.out)"; return; }
  is "$(qcheck k.qcow2)" 0 "$what: qemu-img check finds our result clean"
  is "$(bits k.qcow2)" "$w" "$what: qemu-img info says $w-bit refcounts"
  qemu-img compare -q "$orig" k.qcow2
  is "$?" 0 "$what: the guest data is the original's"
  qemu-img compare -q q.qcow2 k.qcow2
  is "$?" 0 "$what: the guest data is qemu-img's result's"
  s1=$(sha k.qcow2)
  qcowkit amend --refcount-bits="$w" k.qcow2 > /dev/null 2>&1
  is "$? $(sha k.qcow2)" "0 $s1" "$what: a second amend changes nothing"
}

for cs in 512 4096; do
  for from in 1 16 64; do
    snaps=2
    [ "$from" = 1 ] && snaps=0
    mk o.qcow2 "$cs" "$from" "$snaps" 2> mk.err ||
      { fail "$cs B clusters, $from bits: made by qemu-img" "$(head -3 mk.err)"; continue; }
    for to in 1 2 4 8 16 32 64; do
      [ "$to" = "$from" ] && continue
      amend_both "$cs B clusters, $snaps snapshots, $from to $to bits" o.qcow2 "$to"
    done
  done
done

# Leaked clusters: a free cluster inside the file (a deleted snapshot's)
# given refcount 1, which qemu-img check reports (exit 3) and the amend
# frees before the width change; and the first cluster past the end of
# the file given refcount 1, which no check looks at (qemu-img check: 0)
# and which the new structure, placed from the end of the file on, must
# not keep as a leak inside the file.
per=256                                   # 16-bit refcounts per 512 B block
refcount_at () {  # refcount_at FILE K VALUE: refcount of cluster K set
  local rt rb
  rt=$(qkpoke "$1" peek 48 be64)
  rb=$(qkpoke "$1" peek $(( rt + 8 * ($2 / per) )) be64)
  [ "$rb" -ne 0 ] && qkpoke "$1" $(( rb + 2 * ($2 % per) )) be16 "$3"
}
first_free () {  # first_free FILE: the first cluster inside FILE with refcount 0
  local rt n rb t
  rt=$(qkpoke "$1" peek 48 be64)
  n=$(( ($(stat -c %s "$1") + 511) / 512 ))
  for t in $(seq 0 $(( (n - 1) / per ))); do
    rb=$(qkpoke "$1" peek $(( rt + 8 * t )) be64)
    [ "$rb" -ne 0 ] || continue
    od -An -v -tu2 --endian=big -j "$rb" -N 512 "$1" | tr -s ' ' '\n' |
      grep -v '^$' | awk -v b=$(( t * per )) -v n="$n" \
        '$1 == 0 && b + NR - 1 > 0 && b + NR - 1 < n { print b + NR - 1; exit }'
  done | head -1
}
mk l.qcow2 512 16 1
qemu-img snapshot -d s1 l.qcow2
k=$(first_free l.qcow2)
if [ -n "$k" ] && refcount_at l.qcow2 "$k" 1; then
  is "$(qcheck l.qcow2)" 3 "a leaked cluster inside the file: qemu-img check says leaks (exit 3)"
  for w in 64 4; do
    cp l.qcow2 k.qcow2
    qcowkit amend --refcount-bits=$w k.qcow2 > k.out 2>&1
    is "$?" 0 "leaked cluster inside the file, 16 to $w bits: amended"
    is "$(qcheck k.qcow2)" 0 "  the leak freed on the way: qemu-img check clean"
    is "$(bits k.qcow2)" "$w" "  $w-bit refcounts"
    qemu-img compare -q l.qcow2 k.qcow2
    is "$?" 0 "  the guest data is the original's"
  done
else
  fail "a leaked cluster inside the file: made" "no free cluster found"
fi
mk e.qcow2 512 16 1
k=$(( ($(stat -c %s e.qcow2) + 511) / 512 ))
if refcount_at e.qcow2 "$k" 1; then
  is "$(qcheck e.qcow2)" 0 "a refcount past the end of the file: qemu-img check does not see it"
  for w in 64 4; do
    cp e.qcow2 k.qcow2
    qcowkit amend --refcount-bits=$w k.qcow2 > k.out 2>&1
    is "$?" 0 "refcount past the end, 16 to $w bits: amended"
    is "$(qcheck k.qcow2)" 0 "  clean: not kept as a leak inside the grown file"
    qemu-img compare -q e.qcow2 k.qcow2
    is "$?" 0 "  the guest data is the original's"
  done
else
  diag "the first cluster past the end has no refcount block: case not made"
fi

# Down and up again: 64 -> 1 -> 64 -> 16 bits on a 512 B cluster image
# without snapshots ends clean with the original's guest data.
mk r.qcow2 512 64 0
cp r.qcow2 rr.qcow2
ok=true
for w in 1 64 16; do
  qcowkit amend --refcount-bits=$w rr.qcow2 > /dev/null 2>&1 || ok=false
  [ "$(qcheck rr.qcow2)" = 0 ] && [ "$(bits rr.qcow2)" = "$w" ] || ok=false
done
qemu-img compare -q r.qcow2 rr.qcow2 || ok=false
is "$ok" true "64 -> 1 -> 64 -> 16 bits: clean at every step, the guest data kept"

done_testing
