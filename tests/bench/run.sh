#!/bin/bash
# Run every benchmark; prints markdown rows for doc/PERFORMANCE.md.
# Usage: make bench   (or ./run bash tests/bench/run.sh)
set -euo pipefail
d=$(dirname "$0")
echo "# $(date -u +%F) $(nproc) cores, $(qemu-img --version | head -1)"
for b in info-prealloc export check repair amend commit audit; do
  echo
  bash "$d/$b.sh"
done
