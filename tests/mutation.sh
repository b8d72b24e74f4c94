#!/bin/bash
# The mutation check: do the tests notice when qcowkit is wrong? Each
# mutant is a deliberately broken copy of the source (one sed on a copy of
# the tree, in a scratch build directory); it is rebuilt, the tests that
# cover what it breaks run against it, and they must fail. The same tests
# first pass on the unbroken copy, so that a failure means the mutant was
# caught. CI runs it (.ci/run); it is not part of make check (it builds
# qcowkit again). From the top of a built or unbuilt tree:
#
#   bash tests/mutation.sh
#
# One TAP line per baseline and per mutant. About 5 minutes on 2 cores;
# about 3 with MUTATION_SUITE_DIR=TREE (see baseline below).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
srcdir=$top
. "$top/tests/tap.sh"
require qemu-img qemu-io jq strace git autoreconf make
scratch

jobs=$(nproc 2>/dev/null || echo 2)
B=$T/src
mkdir -p "$B"
# the tracked files as they are in the tree (uncommitted changes included)
git -C "$top" ls-files -z | tar -C "$top" --null -T - -cf - | tar -C "$B" -xf -
if ! (cd "$B" && autoreconf -fi && ./configure -q \
        && make -s -j"$jobs" && make -s -j"$jobs" check TESTS=) \
        > "$T/build.log" 2>&1; then
  fail "the copy of the tree builds" "$(tail -n 5 "$T/build.log" | tr '\n' '|')"

  done_testing
  exit 1
fi
diag "built the copy in $SECONDS s"

# tests NAME TEST...: run the TAP tests against the build in $B (with the
# CHECK_CASES of the caller, if any); print how many assertions failed, and
# return non-zero if any did or a test failed
tests () {
  local name=$1 t bad=0 rc=0
  shift
  for t in "$@"; do
    (cd "$B" && CI=true srcdir=. ./run bash "tests/$t") > "$T/$name-${t%.sh}.log" 2>&1 || rc=1
    bad=$((bad + $(grep -c '^not ok' "$T/$name-${t%.sh}.log")))
  done
  echo "$bad"
  [ $rc -eq 0 ] && [ $bad -eq 0 ]
}

# baseline DESC TEST...: the unbroken build passes TESTs. With
# MUTATION_SUITE_DIR (CI, right after the suite ran in that tree, on the
# same sources), a whole test's baseline is that run's verdict, read from
# its .trs file: every assertion passed and the test ended well. Subsets
# (CHECK_CASES, REPAIR_CASES) still run here: they are cheap, and they
# show that tests run in the copy at all.
baseline () {
  local desc=$1 n t trs bad=
  shift
  if [ -n "${MUTATION_SUITE_DIR:-}" ] && [ -z "${CHECK_CASES:-}${REPAIR_CASES:-}" ]; then
    for t in "$@"; do
      trs=$MUTATION_SUITE_DIR/tests/${t%.sh}.trs
      if [ ! -f "$trs" ] || ! grep -qx ':global-test-result: PASS' "$trs" \
         || grep -qE '^:test-result: (FAIL|XPASS|ERROR)' "$trs" \
         || ! grep -q '^:test-result: PASS' "$trs"; then
        bad="$bad $t"
      fi
    done
    if [ -z "$bad" ]; then
      pass "unbroken build: $* pass ($desc; the suite's run of the same sources)"
    else
      fail "unbroken build: $* pass ($desc; the suite's run of the same sources)" \
        "no passing result in $MUTATION_SUITE_DIR/tests for:$bad"
    fi
    return
  fi
  n=$(tests base "$@")
  if [ $? -eq 0 ]; then
    pass "unbroken build: $* pass ($desc)"
  else
    fail "unbroken build: $* pass ($desc)" "$n assertions failed" \
      "$(grep -h -A2 '^not ok' "$T"/base-*.log | head -n 6 | tr '\n' '|')"
  fi
}

# mutant NAME FILE SED DESC TEST...: apply SED to FILE, rebuild, and the
# TESTs must fail; FILE is restored (and rebuilt) afterwards.
mutant () {
  local name=$1 file=$2 expr=$3 desc=$4 n t0=$SECONDS
  shift 4
  cp "$B/$file" "$T/orig"
  sed -i -e "$expr" "$B/$file"
  if cmp -s "$B/$file" "$T/orig"; then
    fail "mutant $name: the sed changes $file" "$expr"
    return
  fi
  if ! make -s -C "$B" -j"$jobs" > "$T/$name-build.log" 2>&1; then
    fail "mutant $name: builds" "$(tail -n 5 "$T/$name-build.log" | tr '\n' '|')"
  else
    n=$(tests "$name" "$@")
    if [ $? -ne 0 ]; then
      pass "mutant $name ($desc) is caught by $*: $n assertions fail"
    else
      fail "mutant $name ($desc) is caught by $*" "every assertion passed"
    fi
  fi
  # restore with a new mtime, so that make rebuilds it
  cat "$T/orig" > "$B/$file"
  diag "mutant $name: $((SECONDS - t0)) s"
}

# A leak no longer changes check's exit status (3 -> 0).
cases="leak-l1-entry-cleared leak-orphans-appended copied-l2-clear"
export CHECK_CASES=$cases
baseline "check cases: $cases" check-cases.sh
mutant check-exit tools/cmd-check.c \
  's/return EXIT_CHECK_LEAKS;/return EXIT_CHECK_CLEAN;/' \
  "check exits 0 for leaks" check-cases.sh
# A read-only command touches the image (its mtime and ctime change).
mutant ro-touch tools/util.c \
  's/^  close (fd);$/  futimens (fd, NULL);\n  close (fd);/' \
  "every command that opens an image sets its mtime" check-cases.sh
unset CHECK_CASES

# The three matrix mutants below break every image (each has zero clusters
# and data at offset 0): three images of the matrix catch them, not all 45
# (build_matrix's MATRIX_IMAGES). With MUTATION_SUITE_DIR the baselines are
# the suite's verdicts on the whole matrix, which hold the subset's.
export MATRIX_IMAGES="cs64k.qcow2 snap.qcow2 chain/sub/top.qcow2"

# map --output=json says "zero": false for every extent that holds no data.
baseline "map against qemu-img map" map-matrix.sh
mutant map-zero tools/cmd-map.c \
  's/e->zero ? "true" : "false"/e->zero \&\& e->data ? "true" : "false"/' \
  "map drops the zero flag where there is no data" map-matrix.sh

# export flips one bit of the first chunk of guest data at offset 0.
baseline "export against qemu-img convert" export-matrix.sh
mutant export-byte tools/export-core.c \
  's/^    if (write_sparse (j, w->buf, n, off) < 0)$/    if (off == 0) w->buf[n - 1] ^= 0x10;\n&/' \
  "export corrupts one byte" export-matrix.sh

# A read-only command opens the image for writing (and writes nothing).
baseline "read-only commands, under strace" readonly.sh
mutant ro-rdwr tools/util.c \
  's/int fd = open (path, O_RDONLY | O_CLOEXEC);/int fd = open (path, O_RDWR | O_CLOEXEC);/' \
  "every command opens the image read-write" readonly.sh
unset MATRIX_IMAGES

# Repair writes into the header cluster when an L1 entry with offset 0 and
# reserved bits makes the check walk it as an L2 table.
cases="l1-entry-reserved-bits-only"
export REPAIR_CASES=$cases
baseline "repair cases: $cases" repair-cases.sh
mutant repair-header lib/repair/repair.c \
  's/^    return "the header cluster";$/    return NULL;/' \
  "repair no longer protects the header cluster" repair-cases.sh
unset REPAIR_CASES

# Writes go around the undo journal (lib/io/writer.c, the stack every
# writer opens): undo then restores nothing.
baseline "repair and undo" repair-cli.sh
mutant repair-undo lib/io/writer.c \
  's/return qk_source_pwrite (w->top, buf, len, off);/return qk_source_pwrite (w->base, buf, len, off);/' \
  "the writer stack (repair, amend, rebase, commit) bypasses the undo journal" repair-cli.sh

done_testing
