#!/bin/bash
# qcowkit audit of a host of 50 domains (one qcow2 disk each, 40 GiB
# virtual: 2 TiB in all; every other one preallocation=metadata, the others
# with 16 MiB written in random order and an internal snapshot) against a
# shell loop of qemu-img check over the same images, same run, runs
# interleaved. audit also reads every domain's definition and checks its
# metadata; --jobs 1 and 2.
set -euo pipefail
. "$(dirname "$0")/common.sh"

N=${AUDIT_DOMAINS:-50}
R=$BENCH_DIR/audit-root
I=$BENCH_DIR/audit-images
if [ ! -f "$I/.done-$N" ]; then
  rm -rf "$R" "$I"
  mkdir -p "$R/etc/qemu" "$I"
  for i in $(seq -w 1 "$N"); do
    f=$I/vm$i.qcow2
    if [ $((10#$i % 2)) = 0 ]; then
      qemu-img create -q -f qcow2 -o preallocation=metadata "$f" 40G
    else
      qemu-img create -q -f qcow2 "$f" 40G
      randwrites "$f" 256 4096 $((10 << 20)) 65536 "$i"
      qemu-img snapshot -c s1 "$f"
    fi
    printf "<domain type='qemu'><name>vm%s</name><memory unit='MiB'>64</memory><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda'/></disk></devices></domain>\n" \
      "$i" "$f" > "$R/etc/qemu/vm$i.xml"
  done
  touch "$I/.done-$N"
fi

loop () { for f in "$I"/*.qcow2; do qemu-img check -q "$f"; done; }
# warm the cache once
loop
echo "| audit, $N domains, $N images, $((N * 40)) GiB virtual ($(du -sh "$I" | cut -f1) on disk) | qcowkit | RSS | qemu-img loop | RSS | ratio |"
echo "|---|---|---|---|---|---|"
for j in 1 2; do
  read -r qt qr < <(measure qcowkit audit --libvirt-root "$R" --jobs "$j" -q --output=jsonl)
  read -r it ir < <(measure bash -c "$(declare -f loop); I='$I'; loop")
  row "audit --jobs $j / qemu-img check, one image after the other" "$qt" "$qr" "$it" "$ir"
done
