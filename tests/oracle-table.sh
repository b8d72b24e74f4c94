#!/bin/bash
# Not a test: a count of what the suite's assertions are checked against,
# read from the TAP logs a `make check` left (issue #15's proof table).
#
#   bash tests/oracle-table.sh BUILD_DIR [BEFORE_BUILD_DIR]
#
# Each "ok"/"not ok" line of each tests/**/*.log is one assertion. It is
# counted as an oracle assertion when its description names an external
# judge: qemu-img, qemu-io, QEMU, libvirt/virsh, ansible, or bytes made
# without qcowkit (cmp, "written before", "independently", the guest data
# the test wrote); every other assertion is self-consistency (qcowkit
# against itself or against the test's own expectations: exit codes,
# messages, invariants, files unchanged). The rule reads descriptions, not
# code, so it is a measure, not a proof: a description that names qemu-img
# only for context is counted as oracle. The regex is ORACLE below.
#
# With BEFORE_BUILD_DIR (a build of an earlier commit whose suite ran), the
# table has both counts per test file and the share before and after.
set -u
ORACLE='qemu-img|qemu-io|qemu|libvirt|virsh|ansible|[^a-z]cmp[^a-z]|cmp$|written before|independent|the data the test wrote|as written'

count () {  # count DIR: "test oracle total" lines
  local dir=$1 f name
  find "$dir/tests" -name '*.log' ! -name test-suite.log ! -path '*/_build/*' | sort |
  while read -r f; do
    name=${f#"$dir/"}
    name=${name%.log}
    grep -E '^(not )?ok( [0-9]+)?( -|$)' "$f" | sed -E 's/^(not )?ok( [0-9]+)?( - )?//' |
      awk -v re="$ORACLE" -v n="$name" '
        { t++; if (tolower($0) ~ re) o++ }
        END { if (t) printf "%s %d %d\n", n, o, t }'
  done
}

after=$(count "$1")
before=
[ $# -lt 2 ] || before=$(count "$2")

pct () { awk -v a="$1" -v b="$2" 'BEGIN { if (b) printf "%.0f %%", 100 * a / b; else printf "-" }'; }

if [ -z "$before" ]; then
  echo "| test | assertions | oracle | self-consistency | oracle share |"
  echo "|---|---:|---:|---:|---:|"
  ta=0 to=0
  while read -r n o t; do
    echo "| $n | $t | $o | $((t - o)) | $(pct "$o" "$t") |"
    ta=$((ta + t)) to=$((to + o))
  done <<< "$after"
  echo "| **all** | $ta | $to | $((ta - to)) | $(pct "$to" "$ta") |"
  exit 0
fi

echo "| test | before: oracle / all | after: oracle / all | share before | share after |"
echo "|---|---:|---:|---:|---:|"
join -a1 -a2 -e 0 -o 0,1.2,1.3,2.2,2.3 <(sort <<< "$before") <(sort <<< "$after") |
{
  bo=0 bt=0 ao=0 at=0
  while read -r n o1 t1 o2 t2; do
    echo "| $n | $o1 / $t1 | $o2 / $t2 | $(pct "$o1" "$t1") | $(pct "$o2" "$t2") |"
    bo=$((bo + o1)) bt=$((bt + t1)) ao=$((ao + o2)) at=$((at + t2))
  done
  echo "| **all** | $bo / $bt | $ao / $at | $(pct "$bo" "$bt") | $(pct "$ao" "$at") |"
}
