#!/bin/bash
# qcowkit rebase against qemu-img rebase. Chains made by qemu-img and
# qemu-io (a qcow2 base, an intermediate image with data and zero
# clusters, a top image of each cluster size from 512 B to 2 MiB, of both
# versions, with an internal snapshot, compressed and zero clusters), each
# top rebased both ways on copies: onto the base (skipping the middle),
# onto nothing, onto a raw file of other contents, smaller or larger, and
# with -u. Where both succeed: qemu-img check clean on ours, the guest
# data the original's (qemu-img compare of the original chain with ours)
# and qemu-img's result's, the same backing file and format in qemu-img
# info. Where both refuse: the same reason, our file untouched. Then the
# fault sweep (killed or failed at every write and flush: consistent,
# leaks at worst, the original's guest data through whatever backing file
# it names; a rerun finishes; undo restores the original bytes), QEMU's
# locks, dry runs and usage errors.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/functions.sh"
require qemu-img qemu-io jq
scratch
cd "$T" || exit 1

# (one process: sha256sum's " -" is cut by the shell)
sha () { local h; h=$(sha256sum < "$1"); echo "${h%% *}"; }
qcheck () { qemu-img check "$1" > /dev/null 2>&1; echo $?; }
binfo () {
  qemu-img info --output=json "$1" 2>/dev/null |
    jq -c '[.["backing-filename"], .["backing-filename-format"], .["virtual-size"]]'
}
qio () { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done
         qemu-io -f qcow2 "${a[@]}" "$f" > /dev/null; }

# the chain the tops sit on: base (qcow2, 32 MiB of data) <- mid
qemu-img create -q -f qcow2 base.qcow2 64M
qio base.qcow2 'write -P 1 0 32M'
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qio mid.qcow2 'write -P 2 4M 8M' 'write -z 20M 1M' 'write -P 5 40M 4M'
# raw files of other contents, one smaller and one larger than the tops
qemu-img create -q -f raw other.raw 32M
qemu-io -f raw -c 'write -P 9 0 16M' other.raw > /dev/null
qemu-img create -q -f raw big.raw 128M
qemu-io -f raw -c 'write -P 1 0 4M' -c 'write -P 8 60M 8M' big.raw > /dev/null

mk_top () {  # mk_top FILE CREATE-OPTIONS [QEMU-IO COMMANDS...]
  local f=$1 o=$2; shift 2
  qemu-img create -q -f qcow2 -o "$o" -b mid.qcow2 -F qcow2 "$f" 64M
  qio "$f" 'write -P 3 6M 1M' "$@"
}
mk_c64k () { mk_top "$1" cluster_size=65536 'write -P 4 30M 64k'; }
mk_c512 () { mk_top "$1" cluster_size=512 'write -P 4 30M 4k'; }
mk_c4k_v2 () { mk_top "$1" cluster_size=4096,compat=0.10 'write -P 4 30M 8k'; }
mk_c2m () { mk_top "$1" cluster_size=2M 'write -P 4 30M 64k'; }
mk_snap () {
  mk_top "$1" cluster_size=65536 'write -P 4 30M 64k'
  qemu-img snapshot -c s1 "$1"
  qio "$1" 'write -P 6 31M 64k'
}
mk_comp_zero () {
  mk_top "$1" cluster_size=65536 'write -c -P 7 8M 1M' 'write -z 10M 1M' \
    'write -z -u 6M 64k'
}
tops="c64k c512 c4k_v2 c2m snap comp_zero"

# target: the -b and -F given to both tools
targets="base.qcow2:qcow2 :none other.raw:raw big.raw:raw"

for top in $tops; do
  mk_$top orig.qcow2 || { fail "$top: made by qemu-img"; continue; }
  osha=$(sha orig.qcow2)
  for tg in $targets; do
    name=${tg%%:*} fmt=${tg#*:}
    fargs=(); [ "$fmt" != none ] && fargs=(-F "$fmt")
    what="$top -> ${name:-no backing}"
    rm -f k.qcow2 q.qcow2; cp orig.qcow2 k.qcow2; cp orig.qcow2 q.qcow2
    qcowkit rebase -b "$name" "${fargs[@]}" k.qcow2 > k.out 2>&1; kr=$?
    qemu-img rebase -b "$name" "${fargs[@]}" q.qcow2 > q.out 2>&1; qr=$?
    is "$kr" "$qr" "$what: exit status as qemu-img rebase"
    [ "$kr" -eq 0 ] && [ "$qr" -eq 0 ] || { diag "$(head -2 k.out) | $(head -2 q.out)"; continue; }
    is "$(qcheck k.qcow2)" 0 "$what: qemu-img check finds ours clean"
    qemu-img compare -q orig.qcow2 k.qcow2
    is "$?" 0 "$what: the guest data is the original's, through the new backing file"
    qemu-img compare -q q.qcow2 k.qcow2
    is "$?" 0 "$what: and qemu-img's result's"
    is "$(binfo k.qcow2)" "$(binfo q.qcow2)" "$what: backing file and format as qemu-img's"
    s1=$(sha k.qcow2)
    qcowkit rebase -b "$name" "${fargs[@]}" k.qcow2 > k2.out 2>&1
    is "$? $(sha k.qcow2)" "0 $s1" "$what: a second rebase onto the same file writes nothing new"
  done
  # -u: the name only
  rm -f k.qcow2 q.qcow2; cp orig.qcow2 k.qcow2; cp orig.qcow2 q.qcow2
  qcowkit rebase -u -b base.qcow2 -F qcow2 k.qcow2 > /dev/null 2>&1; kr=$?
  qemu-img rebase -u -b base.qcow2 -F qcow2 q.qcow2 > /dev/null 2>&1; qr=$?
  is "$kr $(binfo k.qcow2)" "$qr $(binfo q.qcow2)" "$top -u: exit status, backing file and format as qemu-img's"
  qemu-img compare -q q.qcow2 k.qcow2
  is "$?" 0 "$top -u: the same guest data as qemu-img's result (nothing copied)"
done

# ---- refusals ----
mk_c64k r.qcow2
s0=$(sha r.qcow2)
refusal () {  # refusal WHAT ARGS...
  local what=$1; shift
  qcowkit rebase "$@" r.qcow2 > k.out 2>&1; kr=$?
  cp r.qcow2 rq.qcow2
  qemu-img rebase "$@" rq.qcow2 > q.out 2>&1; qr=$?
  local qmsg
  qmsg=$(sed -n 's/^qemu-img: //p' q.out | head -1 | sed "s/'rq.qcow2'/'r.qcow2'/")
  if [ "$kr" = 1 ] && [ "$qr" = 1 ] && grep -qF -- "$qmsg" k.out; then
    pass "$what: both refuse: $qmsg"
  else
    fail "$what: both refuse, for the same reason" "ours ($kr): $(head -2 k.out)" "qemu-img ($qr): $(head -2 q.out)"
  fi
  is "$(sha r.qcow2)" "$s0" "$what: our file untouched"
}
refusal "no -F with -b" -b base.qcow2
refusal "-u, no -F with -b" -u -b base.qcow2
qcowkit rebase -b missing.qcow2 -F qcow2 r.qcow2 > k.out 2>&1
is "$? $(sha r.qcow2)" "1 $s0" "a new backing file that does not exist: exit 1, untouched"
grep -q "Could not open new backing file 'missing.qcow2'" k.out
is "$?" 0 "  with qemu-img's message"
# on purpose: -F raw on a qcow2 file would read its metadata as data
qcowkit rebase -b base.qcow2 -F raw r.qcow2 > k.out 2>&1
is "$? $(sha r.qcow2)" "1 $s0" "-F raw on a qcow2 file: refused (qemu-img reads its metadata as guest data), untouched"

# ---- fault sweep ----
rebase_run () {  # FAULT ARGS...: on a fresh copy f.qcow2 of o.qcow2
  rm -f f.qcow2 j.undo
  cp o.qcow2 f.qcow2
  QCOWKIT_FAULT=$1 qcowkit rebase --undo j.undo "${@:2}" f.qcow2 > f.out 2>&1
}
rebase_verify () {  # FAULT ARGS...
  shift
  local c
  qemu-img check f.qcow2 > /dev/null 2>&1; c=$?
  case $c in 0|3) ;; *) sweep_bad "check-$c" ;; esac
  qemu-img compare -q o.qcow2 f.qcow2 || sweep_bad guest-data
  cp f.qcow2 r2.qcow2
  qcowkit rebase "$@" r2.qcow2 > /dev/null 2>&1 || sweep_bad rerun-failed
  qemu-img check r2.qcow2 > /dev/null 2>&1 || sweep_bad rerun-not-clean
  qemu-img compare -q o.qcow2 r2.qcow2 || sweep_bad rerun-guest-data
  sweep_undone j.undo f.qcow2 "$osha"
}
sweep () {  # sweep NAME MAKER ARGS...
  local name=$1 maker=$2; shift 2
  local osha
  $maker o.qcow2
  osha=$(sha o.qcow2)
  fault_sweep "$name" "consistent, guest data kept, a rerun finishes, undo restores" \
    40 rebase_run rebase_verify : "$@"
}
# a small chain of its own, so that the sweep stays short: the middle
# image differs from the base in 4 clusters, 2 of them in an L2 table the
# top shares with its snapshot
qemu-img create -q -f qcow2 sbase.qcow2 64M
qio sbase.qcow2 'write -P 1 0 256k' 'write -P 1 40M 64k'
qemu-img create -q -f qcow2 -b sbase.qcow2 -F qcow2 smid.qcow2
qio smid.qcow2 'write -P 2 64k 128k' 'write -P 2 40M 64k' 'write -z 41M 64k'
mk_small_snap () {
  qemu-img create -q -f qcow2 -o cluster_size=65536 -b smid.qcow2 -F qcow2 "$1" 64M
  qio "$1" 'write -P 3 128k 64k'
  qemu-img snapshot -c s1 "$1"
}
sweep "onto the base, skipping the middle (L2 tables shared with a snapshot copied)" mk_small_snap -b sbase.qcow2 -F qcow2
sweep "detached" mk_small_snap -b ""

# ---- locks, dry run, usage ----
mk_c64k busy.qcow2
ok "qemu-io holds busy.qcow2 open (qemu-img info refuses it for the lock)" start_holder busy.qcow2
s0=$(sha busy.qcow2)
qcowkit rebase -b base.qcow2 -F qcow2 busy.qcow2 > out 2>&1
is "$?" 1 "rebase refuses an image QEMU has open: exit 1"
grep -q "in use" out
is "$?" 0 "  and says it is in use"
is "$(sha busy.qcow2)" "$s0" "  the image in use was not written"
stop_holder

mk_c64k d.qcow2
s0=$(sha d.qcow2)
qcowkit rebase -n -b base.qcow2 -F qcow2 d.qcow2 > out 2>&1
is "$? $(sha d.qcow2)" "0 $s0" "rebase -n: exit 0, nothing written"
grep -q "Would rebase d.qcow2 onto base.qcow2: 192 of 1007 clusters differ" out
is "$?" 0 "  and says how many clusters differ (the 12 MiB the middle image holds that the top does not)"
qcowkit rebase --undo d.undo -b "" d.qcow2 > /dev/null 2>&1
is "$(binfo d.qcow2 | jq -r '.[0]')" "null" "rebase --undo -b '': detached"
qcowkit undo d.undo d.qcow2 > /dev/null 2>&1
is "$? $(sha d.qcow2)" "0 $s0" "qcowkit undo puts back the original bytes"
qcowkit rebase d.qcow2 > out 2>&1
is "$?" 2 "rebase without -b: usage error, exit 2"

done_testing
