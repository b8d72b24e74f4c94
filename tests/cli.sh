#!/bin/bash
# Command-line behaviour: help, version, usage errors and their exit codes.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
scratch

code () { "$@" >/dev/null 2>&1; echo $?; }

is "$(code qcowkit --help)" 0 "qcowkit --help exits 0"
is "$(code qcowkit --version)" 0 "qcowkit --version exits 0"
case "$(qcowkit --version)" in "qcowkit "[0-9]*) pass "--version prints a version";; *) fail "--version prints a version";; esac
is "$(code qcowkit)" 2 "no command is a usage error"
is "$(code qcowkit frobnicate)" 2 "unknown command is a usage error"
for c in info map export dump snapshot; do
  is "$(code qcowkit $c --help)" 0 "qcowkit $c --help exits 0"
  out=$(qcowkit $c --help)
  case "$out" in "Usage: qcowkit $c"*) pass "$c --help starts with its usage";; *) fail "$c --help starts with its usage" "$out";; esac
  is "$(code qcowkit $c --no-such-option x)" 2 "$c rejects an unknown option with 2"
done
is "$(code qcowkit info)" 2 "info without an image: 2"
is "$(code qcowkit info --output=xml x)" 2 "info --output=xml: 2"
is "$(code qcowkit map --start-offset abc x)" 2 "map with a bad size: 2"
is "$(code qcowkit export onlyone)" 2 "export without OUTPUT: 2"
is "$(code qcowkit dump x nonsense)" 2 "dump of an unknown structure: 2"
is "$(code qcowkit dump x l2)" 2 "dump l2 without an index: 2"
is "$(code qcowkit snapshot)" 2 "snapshot without a subcommand: 2"
is "$(code qcowkit info "$T/missing.qcow2")" 1 "info of a missing file: 1"
err=$(qcowkit info "$T/missing.qcow2" 2>&1 >/dev/null)
case "$err" in "qcowkit: "*"No such file"*) pass "errors are prefixed 'qcowkit: ' and say why";; *) fail "error message" "$err";; esac
mkdir "$T/dir"
is "$(code qcowkit info "$T/dir")" 1 "info of a directory: 1"
: > "$T/empty"
is "$(code qcowkit info "$T/empty")" 0 "an empty file is a (raw) image"
is "$(code qcowkit export "$T/empty" "$T/out")" 0 "exporting an empty raw image works"

# Options and sizes as qemu-img reads them
if have qemu-img "options and sizes as qemu-img reads them"; then
  qemu-img create -q -f qcow2 "$T/a.qcow2" 4M
  qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$T/b.qcow2"
  a=$(qcowkit map --output=json --start-offset 1M --max-length 64k "$T/a.qcow2")
  b=$(qcowkit map --output=json --start-offset=1M --max-length=64k "$T/a.qcow2")
  is "$b" "$a" "map takes --opt=N as well as --opt N"
  case "$(qcowkit map --output=json --max-length 010 "$T/a.qcow2")" in
    *'"length": 10,'*) pass "sizes are decimal: 010 is ten";;
    *) fail "sizes are decimal: 010 is ten";;
  esac
  is "$(code qcowkit map --max-length 0x "$T/a.qcow2")" 2 "0x alone is not a size"
  # export never writes over an image it reads
  before=$(sha256sum < "$T/a.qcow2")
  is "$(code qcowkit export "$T/b.qcow2" "$T/b.qcow2")" 1 "export over its own image is refused"
  is "$(code qcowkit export "$T/b.qcow2" "$T/a.qcow2")" 1 "export over its backing file is refused"
  is "$(sha256sum < "$T/a.qcow2")" "$before" "the backing file is untouched"
  ln -s a.qcow2 "$T/link.qcow2"
  is "$(code qcowkit export "$T/b.qcow2" "$T/link.qcow2")" 1 "export over a symlink to an input is refused"
  err=$(qcowkit export "$T/b.qcow2" "$T/a.qcow2" 2>&1)
  case "$err" in *"refusing"*) pass "the refusal says why";; *) fail "the refusal says why" "$err";; esac
  # threads: the same bytes whatever the number of workers
  qemu-io -f qcow2 -c 'write -P 7 0 1M' -c 'write -P 9 3M 512k' "$T/b.qcow2" >/dev/null
  for n in 1 2 4; do
    QCOWKIT_THREADS=$n qcowkit export -q "$T/b.qcow2" "$T/out$n.raw"
  done
  qemu-img convert -O raw "$T/b.qcow2" "$T/ref.raw"
  for n in 1 2 4; do ok "export with $n worker(s) equals qemu-img convert" cmp -s "$T/ref.raw" "$T/out$n.raw"; done
  # names from an image never reach the terminal raw
  qemu-img snapshot -c "$(printf 'evil\033]0;x\007name')" "$T/a.qcow2"
  out=$(qcowkit snapshot list "$T/a.qcow2"; qcowkit info "$T/a.qcow2")
  case "$out" in *$'\033'*) fail "control characters in names are escaped";;
    *'evil\x1b]0;x\x07name'*) pass "control characters in names are escaped";;
    *) fail "control characters in names are escaped" "$out";; esac
  ok "JSON keeps the name exactly" test "$(qcowkit snapshot list --output=json "$T/a.qcow2" | jq -r '.[0].name')" = "$(printf 'evil\033]0;x\007name')"
else
  require qemu-img
fi
done_testing
