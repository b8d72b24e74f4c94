# Shared helpers for qcowkit shell tests. Sourced after tap.sh.
# Compare two JSON documents with jq after applying a filter to each.
# Images are made by qemu-img/qemu-io at test time.

qimg () { qemu-img "$@"; }
qio () { qemu-io -f qcow2 "$@" >/dev/null; }

# json_eq FILTER A B: jq-normalised equality of two JSON files
json_eq () {
  _a=$(jq -S "$1" "$2") || return 1
  _b=$(jq -S "$1" "$3") || return 1
  if [ "$_a" = "$_b" ]; then return 0; fi
  diff <(echo "$_a") <(echo "$_b") | head -20 | sed 's/^/#   /'
  return 1
}

# file_state FILE: checksum and mtime, to prove a command did not modify it
file_state () { echo "$(sha256sum < "$1") $(stat -c '%Y.%y %s' "$1")"; }
