#!/bin/bash
# The quick-start demo must run and recover the data byte-identically.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io
scratch
out=$(QCOWKIT_DEMO_DIR=$T bash "$srcdir/tests/demo-run.sh" 2>&1)
rc=$?
is "$rc" 0 "demo exits 0"
case "$out" in *"byte-identical"*) pass "demo recovers the data";; *) fail "demo recovers the data" "$out";; esac
case "$out" in *"Could not"*|*"Too much extra"*|*"rror"*) pass "demo shows QEMU refusing the image";; *) fail "demo shows QEMU refusing" "$out";; esac
case "$out" in *"corrupt bit"*) pass "qcowkit info names the corrupt bit";; *) fail "qcowkit info names the corrupt bit";; esac
done_testing
