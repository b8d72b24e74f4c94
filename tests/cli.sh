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
done_testing
