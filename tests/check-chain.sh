#!/bin/bash
# check --chain checks every qcow2 image of a backing chain, the image
# named first (a raw base is skipped), and exits with the worst result.
# Each image's report is compared with qemu-img check of that image alone,
# member by member, clean and with damage in the middle of the chain.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq
. "$srcdir/tests/check/functions.sh"   # before cd: srcdir may be relative
scratch
cd "$T" || exit 1
set -e                                  # the images must be made as written

fields='."check-errors", .corruptions, .leaks, ."image-end-offset",
  ."allocated-clusters", ."total-clusters", ."fragmented-clusters",
  ."compressed-clusters"'
# compare CHAIN-JSON INDEX IMAGE NAME: that element against qemu-img check
compare () {
  local q
  q=$(qemu-img check --output=json "$3" 2>/dev/null | jq -c "[$fields]")
  if [ -z "$q" ]; then
    fail "$4: qemu-img check gave a report for $3"
    return
  fi
  is "$(jq -c ".[$2] | [$fields]" "$1")" "$q" \
    "$4: $3's report is qemu-img check's (every member)"
}

qemu-img create -q -f qcow2 base.qcow2 16M
IMG=base.qcow2 wr 0 1M 1
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
IMG=mid.qcow2 wr 512k 1M 2
IMG=mid.qcow2 wrc 4M 256k 3
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
IMG=top.qcow2 wr 1M 64k 4

set +e
qcowkit check --chain --output=json top.qcow2 > c.json
is "$?" 0 "clean chain: check --chain exits 0"
is "$(qemu-img map --output=json top.qcow2 | jq '[.[] | select(.data)] | length > 2')" true \
  "the chain holds data in every layer"
is "$(jq -r '[.[].filename] | join(" ")' c.json)" \
  "$(qemu-img info --backing-chain --output=json top.qcow2 | jq -r '[.[].filename] | join(" ")')" \
  "clean chain: one report per image, in qemu-img info --backing-chain's order"
for i in 0 1 2; do
  compare c.json $i "$(jq -r ".[$i].filename" c.json)" "clean chain"
done
qcowkit check --chain top.qcow2 > c.txt
is "$(grep -c '^No errors were found on the image.$' c.txt)" 3 \
  "clean chain, human: 'No errors were found' once per image"

# a leak in the middle image: the worst result is the chain's
IMG=mid.qcow2 add_cluster > /dev/null
qemu-img check mid.qcow2 > /dev/null 2>&1
is "$?" 3 "a leaked cluster in mid.qcow2: qemu-img check mid exits 3"
qcowkit check --chain --output=json top.qcow2 > c.json
is "$?" 3 "... check --chain top exits 3 too (the worst of the chain)"
for i in 0 1 2; do
  compare c.json $i "$(jq -r ".[$i].filename" c.json)" "leak in mid"
done
qcowkit check top.qcow2 > /dev/null
is "$?" 0 "... check without --chain looks at top only (exit 0)"

# a corruption in the base wins over the leak
c=$(IMG=base.qcow2 cs)
IMG=base.qcow2 set_refcount "$(IMG=base.qcow2 data_off 0 0)" 0
qemu-img check base.qcow2 > /dev/null 2>&1
is "$?" 2 "a refcount 0 on base.qcow2's data: qemu-img check base exits 2"
qcowkit check --chain --output=json top.qcow2 > c.json
is "$?" 2 "... check --chain top exits 2 (corruption beats leak)"
for i in 0 1 2; do
  compare c.json $i "$(jq -r ".[$i].filename" c.json)" "corrupt base"
done

# a raw base is skipped: qemu-img check has no report for raw either
qemu-img create -q -f raw raw.img 16M
qemu-img create -q -f qcow2 -b raw.img -F raw over.qcow2
IMG=over.qcow2 wr 0 64k 5
qcowkit check --chain --output=json over.qcow2 > r.json
is "$? $(jq -r '[.[].filename] | join(" ")' r.json)" "0 over.qcow2" \
  "a raw base: only the qcow2 image has a report (exit 0)"
compare r.json 0 over.qcow2 "raw base"
done_testing
