#!/bin/bash
# Several snapshots claiming to be current (<active>1</active>): libvirt
# keeps the last one that readdir gives it. qcowkit predicts that pick
# from the directory order, and convert --to bulk writes it as current=.
# Judged by a fresh embedded libvirt on the same files (issue #9, 11).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
. "$srcdir/tests/meta-lib.sh"
require jq virsh
scratch

R=$T/root
# six domains, each with a different set of claimants among s0..s7, all
# loaded by one libvirt process
sets=("s1 s3 s5" "s0 s7" "s2 s4 s6" "s6 s1" "s4 s0 s2" "s0 s1 s2 s3 s4 s5 s6 s7")
for i in "${!sets[@]}"; do
  meta_gen "$R" "d$i" 8 per-file chain
  S=$R/lib/qemu/snapshot/d$i
  # one UUID per domain (libvirt refuses duplicates)
  sed -i "s|6b1c2a2e-1d0a-4c57-9d0a-3e2b5f0c9a11|6b1c2a2e-1d0a-4c57-9d0a-3e2b5f0c9a2$i|" \
    "$R/etc/qemu/d$i.xml" "$S"/*.xml
  sed -i 's|<active>1</active>|<active>0</active>|' "$S"/*.xml
  for s in ${sets[$i]}; do
    sed -i 's|<active>0</active>|<active>1</active>|' "$S/$s.xml"
  done
done
mkdir -p "$R/etc"
# user root: the capability cache stays valid (no re-probing of QEMU)
printf 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n' > "$R/etc/qemu.conf"
cmds=
for i in "${!sets[@]}"; do cmds="$cmds echo @; snapshot-current d$i --name;"; done
t0=$SECONDS
timeout 600 virsh -q -c "qemu:///embed?root=$R" "$cmds" > "$T/virsh.out" 2> "$T/virsh.err"
is "$?" 0 "libvirt loads the six domains"
diag "virsh took $((SECONDS - t0)) s"
mapfile -t lv < <(tr -d '\n' < "$T/virsh.out" | tr '@' '\n' | sed 1d)
is "${#lv[@]}" "${#sets[@]}" "... and names a current snapshot for each" 
differ=0
for i in "${!sets[@]}"; do
  S=$R/lib/qemu/snapshot/d$i
  sorted_last=$(printf '%s\n' ${sets[$i]} | sort | tail -1)
  [ "${lv[$i]}" != "$sorted_last" ] && differ=$((differ + 1))
  qcowkit meta check "d$i" --libvirt-root "$R" --no-images --output=json > "$T/c.json"
  is "$(jq -r '.snapshots.current // "none"' "$T/c.json")" "${lv[$i]:-none}" \
    "claimants ${sets[$i]}: qcowkit predicts libvirt's pick (readdir: $(ls -f "$S" | grep xml | tr '\n' ' '))"
  qcowkit meta convert "d$i" --libvirt-root "$R" --to bulk --force > /dev/null 2>&1
  is "$(grep -o "current='[^']*'" "$R/lib/qemu/snapshot/d$i.xml" 2>/dev/null)" "current='${lv[$i]}'" \
    "... convert --to bulk writes libvirt's pick as current="
done
diag "libvirt's pick differed from the last by name in $differ of ${#sets[@]} cases"
done_testing
