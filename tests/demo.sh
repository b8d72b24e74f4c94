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
case "$out" in *"ERROR 0x020003"*) pass "qcowkit check reports the snapshot entry with its code";; *) fail "qcowkit check reports the snapshot entry";; esac
case "$out" in *"qcowkit check: exit 2"*) pass "qcowkit check exits 2 (corruptions), like qemu-img check";; *) fail "qcowkit check exits 2";; esac
for p in MISSING_PARENT MULTIPLE_CURRENT INT_SNAPSHOT_MISSING INT_SNAPSHOT_UNKNOWN; do
  case "$out" in *" $p: "*) pass "qcowkit meta check finds $p";; *) fail "qcowkit meta check finds $p";; esac
done
case "$out" in *"qcowkit meta check: exit 2"*) pass "qcowkit meta check exits 2";; *) fail "qcowkit meta check exits 2";; esac
done_testing
