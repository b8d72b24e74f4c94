#!/bin/bash
# The qcowkit demo: make a small VM disk, damage it the way a host crash and
# a buggy tool would, show that QEMU refuses it, and show what qcowkit reads
# and recovers. Run through ./quickstart demo (or ./run bash tests/demo-run.sh).
set -euo pipefail

D=${QCOWKIT_DEMO_DIR:-$(mktemp -d /tmp/qcowkit-demo.XXXXXX)}
mkdir -p "$D"
cd "$D"
say () { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run () { printf '$ %s\n' "$*"; "$@"; }

say "1. A 64 MiB VM disk with data, an internal snapshot and a dirty bitmap"
rm -f vm.qcow2
qemu-img create -q -f qcow2 vm.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 8M 512k' \
        -c 'write -z 16M 1M' vm.qcow2 >/dev/null
qemu-img snapshot -c before-upgrade vm.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 32M 2M' vm.qcow2 >/dev/null
qemu-img bitmap --add vm.qcow2 backup-0
qemu-img convert -O raw vm.qcow2 expected.raw
echo "guest data sha256: $(sha256sum < expected.raw | cut -c1-16)..."

say "2. Damage: the host crashed mid-write and a tool wrote a bad snapshot entry"
# dirty + corrupt bits (incompatible_features, byte 79)
printf '\x03' | dd of=vm.qcow2 bs=1 seek=79 conv=notrunc status=none
# snapshot entry 0: extra_data_size (entry offset + 36) = 2000 > QEMU's 1 KiB
snap=$((16#$(od -An -tx1 -j64 -N8 vm.qcow2 | tr -d ' \n')))
printf '\x00\x00\x07\xd0' | dd of=vm.qcow2 bs=1 seek=$((snap + 36)) conv=notrunc status=none
echo "set the dirty and corrupt bits; snapshot entry at 0x$(printf %x $snap) claims 2000 bytes of extra data"

say "3. QEMU refuses the image"
run qemu-img info vm.qcow2 || echo "(qemu-img info: exit $?)"
run qemu-img convert -O raw vm.qcow2 qemu.raw || echo "(qemu-img convert: exit $?)"

say "4. qcowkit reads what can be read and says what cannot"
run qcowkit info vm.qcow2 || true

say "5. qcowkit recovers the guest data anyway (reading never needs refcounts)"
run qcowkit export vm.qcow2 recovered.raw
if cmp -s expected.raw recovered.raw; then
  echo "recovered.raw is byte-identical to the guest data before the damage"
else
  echo "recovered.raw DIFFERS from the guest data" >&2
  exit 1
fi
run qcowkit map vm.qcow2

say "Files are in $D"
