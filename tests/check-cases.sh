#!/bin/bash
# The check catalog: every directory under tests/check/ with a `script` is a
# damage scenario. The script (sourced with $IMG set, in a fresh directory,
# with tests/check/functions.sh loaded) builds a broken image; `expect`
# says what qcowkit check --output=json must find:
#
#   codes: 0x040001 0x040002   the set of problem codes (sorted, unique)
#   exit: N                    the exit status
#   corruptions: N             the "corruptions" member (absent = 0)
#   leaks: N                   the "leaks" member (absent = 0)
#   refuses: ERE               instead of codes, corruptions and leaks:
#                              qcowkit gives no report, and its stderr
#                              matches ERE
#   args: --deep               extra qcowkit check options (optional)
#   message: ERE               some problem's message matches this extended
#                              regular expression (optional, repeatable)
#   qemu: same                 (the default) qemu-img check --output=json on
#                              the same image gives the same exit status and
#                              the same corruptions, leaks, check-errors,
#                              image-end-offset, total-clusters,
#                              allocated-clusters, fragmented-clusters and
#                              compressed-clusters (qcowkit's JSON is a
#                              superset with the same names)
#   qemu: differs REASON       ours is more exact, for REASON; then each
#   qemu-FIELD: N              field that differs (FIELD: exit or one of the
#                              above) records qemu-img's value, which is
#                              asserted, and ours must differ from it, so the
#                              difference stays documented and tested; the
#                              other fields are compared as for "same"
#   qemu-refuses: ERE          qemu-img check gives no report for this image
#                              (it cannot open it, or its check aborts): its
#                              stderr, its lines joined with spaces, matches
#                              ERE, and its exit status is ours
#                              (or qemu-exit with "differs"); the counts are
#                              not comparable and are not compared
#   qemu-cmd: COMMAND          how to run qemu-img check (optional; a shell
#                              command using $IMG, e.g. for encryption keys)
#
# Each case also proves the check did not modify the image (sha256 and
# mtime). At the end, every code of the problem table must be expected by
# some case or listed in tests/check/UNTRIGGERED with the reason.
#
# The catalog runs as several TAP tests so that make -j runs them side by
# side: tests/check-cases-K.sh sets CHECK_SHARD=K/N and sources this file,
# which then runs every Nth case (in name order) from the Kth; shard 1 also
# checks the problem table's coverage. Run directly, it runs everything.
# CHECK_CASES="name1 name2" runs only those cases (for development; CI
# unsets it).
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq qkpoke
scratch

cases_dir=$(cd "$srcdir/tests/check" && pwd)
start=$(date +%s)
shard=${CHECK_SHARD:-1/1}
shard_k=${shard%/*} shard_n=${shard#*/}

# expect_load FILE: EXP[KEY] = the value of the first "KEY: value" line
# of FILE, for every KEY (read by the shell once per case: a sed per key
# was two processes each, and the catalog asks for a dozen keys a case).
declare -A EXP
expect_load () {
  local l
  EXP=()
  [ -f "$1" ] || return 0
  while IFS= read -r l || [ -n "$l" ]; do
    [[ $l =~ ^([a-zA-Z0-9_-]+):[[:space:]]*(.*)$ ]] || continue
    [ -n "${EXP[${BASH_REMATCH[1]}]+set}" ] ||
      EXP[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
  done < "$1"
}

# The image's report (--chain gives an array of them, the image first).
IMAGE='(if type == "array" then .[0] else . end)'

# The members of qemu-img check --output=json that qcowkit's report has too.
FIELDS="corruptions leaks check-errors image-end-offset total-clusters
        allocated-clusters fragmented-clusters compressed-clusters"

# report ARRAY FILE: whether FILE holds one JSON check report (an object
# with check-errors, which qemu-img always prints when it prints a report),
# and then its FIELDS in the associative ARRAY, 0 for those absent (both
# tools leave out members that are 0).
report () {
  local -n _r=$1
  local f v
  _r=()
  # shellcheck disable=SC2086
  v=$(jq -r -s --arg f "$(echo $FIELDS)" \
        "if length == 1 and (.[0] | $IMAGE | type == \"object\" and
                              has(\"check-errors\"))
         then .[0] | $IMAGE | . as \$o | (\$f | split(\" \"))[] |
              \"\\(.)=\\(\$o[.] // 0)\"
         else empty end" "$2" 2>/dev/null)
  [ -n "$v" ] || return 1
  while IFS== read -r f v; do _r[$f]=$v; done <<< "$v"
}

# chk GOT WANT DESCRIPTION: is, returning whether it passed.
chk () { is "$@"; [ "$1" = "$2" ]; }

stamp () { local h; h=$(sha256sum < "$1"); echo "${h%% *} $(stat -c %y "$1")"; }

declare -A O Q
all_expected=
ran=0 idx=0 refused=0 compared=0
for dir in "$cases_dir"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/script" ] || continue
  idx=$((idx + 1))
  expect_load "$dir/expect"
  all_expected="$all_expected ${EXP[codes]-}"
  [ $(( (idx - 1) % shard_n + 1 )) -eq "$shard_k" ] || continue
  if [ -n "${CHECK_CASES:-}" ] && ! [[ " $CHECK_CASES " == *" $name "* ]]; then
    continue
  fi
  ran=$((ran + 1))
  exp=$dir/expect
  if [ ! -f "$exp" ]; then
    fail "$name: has an expect file"
    continue
  fi
  w=$T/$name
  mkdir -p "$w"
  IMG=$w/test.qcow2
  # A shell of its own, so that set -e holds (it would not in a subshell
  # whose status is tested).
  if ! (cd "$w" && IMG=$IMG bash -ec '. "$1"; . "$2"' script \
          "$cases_dir/functions.sh" "$dir/script") > "$w/script.log" 2>&1 \
     || [ ! -f "$IMG" ]; then
    fail "$name: the script builds the image" \
      "$(tail -n 5 "$w/script.log" | tr '\n' '|')"
    continue
  fi
  pass "$name: the script builds the image"

  want_codes=${EXP[codes]-}
  want_exit=${EXP[exit]-}
  want_c=${EXP[corruptions]-}
  want_l=${EXP[leaks]-}
  args=${EXP[args]-}
  qemu=${EXP[qemu]-}
  qemu=${qemu:-same}
  qcmd=${EXP[qemu-cmd]-}
  refuses=${EXP[qemu-refuses]-}
  ours_refuses=${EXP[refuses]-}

  before=$(stamp "$IMG")
  # shellcheck disable=SC2086
  (cd "$w" && qcowkit check --output=json $args "$IMG") > "$w/ours.json" \
    2> "$w/ours.err"
  rc=$?
  after=$(stamp "$IMG")

  report O "$w/ours.json" ||
    for f in $FIELDS; do O[$f]=none; done   # no report: nothing is equal
  codes=$(jq -r "$IMAGE | [.problems[].code] | unique | join(\" \")" \
            "$w/ours.json" 2>/dev/null)
  c=${O[corruptions]} l=${O[leaks]}
  ours_diag () {
    diag "qcowkit check: exit $rc, stderr: $(head -c 600 "$w/ours.err")"
    jq -r "$IMAGE"' | .problems[] | "#   \(.code) \(.class) \(.message)"' \
      "$w/ours.json" 2>/dev/null | head -n 15
  }
  ok_all=true
  chk "$rc" "$want_exit" "$name: exit status" || ok_all=false
  if [ -n "$ours_refuses" ]; then
    # no report: there are no counts to assert, only what it says
    if [ "$c" = none ] && tr '\n' ' ' < "$w/ours.err" | grep -Eq -- "$ours_refuses"; then
      pass "$name: qcowkit check gives no report: /$ours_refuses/"
    else
      fail "$name: qcowkit check gives no report: /$ours_refuses/" \
        "corruptions: $c, stderr: $(head -c 300 "$w/ours.err")"
      ok_all=false
    fi
    [ -z "$want_codes$want_c$want_l" ] ||
      fail "$name: 'refuses:' goes without codes, corruptions and leaks"
  else
    chk "$codes" "$want_codes" "$name: problem codes" || ok_all=false
    chk "$c" "${want_c:-0}" "$name: corruptions" || ok_all=false
    chk "$l" "${want_l:-0}" "$name: leaks" || ok_all=false
  fi
  while IFS= read -r re; do
    [ -n "$re" ] || continue
    jq -r "$IMAGE | .problems[].message" "$w/ours.json" 2>/dev/null | grep -Eq -- "$re"
    chk "$?" 0 "$name: a problem says /$re/" || ok_all=false
  done < <(sed -n 's/^message:[[:space:]]*//p' "$exp")
  is "$after" "$before" "$name: the check left the image unchanged"
  if ! $ok_all; then ours_diag; fi

  if [ -n "$qcmd" ]; then
    (cd "$w" && IMG=$IMG timeout 60 bash -c "$qcmd") > "$w/qemu.json" \
      2> "$w/qemu.err"
  else
    (cd "$w" && timeout 60 qemu-img check --output=json "$IMG") \
      > "$w/qemu.json" 2> "$w/qemu.err"
  fi
  qrc=$?
  qemu_diag () {
    diag "qemu-img check: exit $qrc"
    # (whole lines: a cut one would swallow the next TAP line)
    head -n 8 "$w/qemu.json" | cut -c 1-300 | sed 's/^/#   /'
    head -n 8 "$w/qemu.err" | cut -c 1-300 | sed 's/^/#   /'
  }
  case $qemu in
    same) reason= ;;
    differs*)
      reason=${qemu#differs}
      reason=${reason# }
      [ -n "$reason" ] ||
        fail "$name: 'qemu: differs' gives the reason" ;;
    *)
      fail "$name: 'qemu:' is 'same' or 'differs REASON'" "got: $qemu"
      continue ;;
  esac
  # The documented qemu-img values (qemu-FIELD: N), "differs" only.
  documented=$(sed -n 's/^qemu-\([a-z-]*\):[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p' "$exp" |
               tr '\n' ' ')
  if [ "$qemu" = same ] && [ -n "$documented" ]; then
    fail "$name: 'qemu: same' documents no qemu-img value" "got: $documented"
  fi
  q_ok=true
  # qfield FIELD OURS QEMU: qemu-img's FIELD is ours, or the documented
  # value, and then not ours
  qfield () {
    local f=$1 o=$2 q=$3 d
    d=${EXP[qemu-$f]-}
    if [ -z "$d" ]; then
      chk "$q" "$o" "$name: qemu-img check gives the same $f" || q_ok=false
    elif [ "$q" = "$d" ] && [ "$o" != "$d" ]; then
      pass "$name: qemu-img check's $f is $d, ours $o (documented difference)"
    else
      fail "$name: qemu-img check's $f is $d, ours not (documented difference)" \
        "qemu-img: $q, ours: $o"
      q_ok=false
    fi
  }
  if report Q "$w/qemu.json"; then
    compared=$((compared + 1))
    if [ -n "$refuses" ]; then
      fail "$name: qemu-img refuses the image (qemu-refuses: $refuses)" \
        "it gave a report, exit $qrc"
    fi
    qfield exit "$rc" "$qrc"
    for f in $FIELDS; do
      qfield "$f" "${O[$f]}" "${Q[$f]}"
    done
  else
    # No report to compare counts with: qemu-img refused the image. What
    # it did say is asserted instead (the counts are not comparable).
    refused=$((refused + 1))
    qfield exit "$rc" "$qrc"
    if [ -z "$refuses" ]; then
      fail "$name: qemu-img check gives a report to compare" \
        "exit $qrc: $(head -c 300 "$w/qemu.err")"
      q_ok=false
    elif tr '\n' ' ' < "$w/qemu.err" | grep -Eq -- "$refuses"; then
      pass "$name: qemu-img check refuses the image: /$refuses/"
    else
      fail "$name: qemu-img check refuses the image: /$refuses/" \
        "stderr: $(head -c 300 "$w/qemu.err")"
      q_ok=false
    fi
    stale=
    for f in $documented; do [ "$f" = exit ] || stale="$stale $f"; done
    [ -z "$stale" ] || fail "$name: no qemu-img count is documented for a refused image" \
      "qemu-FIELD lines for:$stale"
  fi
  $q_ok || qemu_diag
done

# ---- every code is triggered by some case, or allow-listed with a reason ----
if [ -z "${CHECK_CASES:-}" ] && [ "$shard_k" -eq 1 ]; then
  qcowkit check --list-problems | awk '{print $1}' > "$T/codes"
  untrig=$cases_dir/UNTRIGGERED
  expected=$(echo "$all_expected" | tr ' ' '\n' | grep . | sort -u)
  allowed=$(sed -n 's/^\(0x[0-9a-f]\{6\}\)[[:space:]].*/\1/p' "$untrig" 2>/dev/null | sort -u)
  # (whole-line membership, as grep -qx tested it, in the shell: a grep
  # per code and list was some 500 processes)
  declare -A in_expected=() in_allowed=() in_codes=()
  while IFS= read -r l; do in_expected[x$l]=1; done <<< "$expected"
  while IFS= read -r l; do in_allowed[x$l]=1; done <<< "$allowed"
  while IFS= read -r l; do in_codes[x$l]=1; done < "$T/codes"
  missing=
  for code in $(cat "$T/codes"); do
    if [ -z "${in_expected[x$code]-}" ] && [ -z "${in_allowed[x$code]-}" ]; then
      missing="$missing $code"
    fi
  done
  is "${missing# }" "" "every problem code is triggered by a case or in tests/check/UNTRIGGERED"
  stale=
  for code in $allowed; do
    [ -n "${in_expected[x$code]-}" ] && stale="$stale $code"
    [ -n "${in_codes[x$code]-}" ] || stale="$stale $code(unknown)"
  done
  is "${stale# }" "" "tests/check/UNTRIGGERED lists only codes no case triggers"
  noreason=$(grep -E '^0x[0-9a-f]{6}[[:space:]]*$' "$untrig" 2>/dev/null)
  is "$noreason" "" "every line of tests/check/UNTRIGGERED gives a reason"
  unknown=
  for code in $expected; do
    [ -n "${in_codes[x$code]-}" ] || unknown="$unknown $code"
  done
  is "${unknown# }" "" "every expected code exists in the problem table"
  ok "the catalog has at least 40 cases ($idx)" test "$idx" -ge 40
fi
diag "shard $shard: $ran cases in $(( $(date +%s) - start )) s;" \
  "$compared compared with qemu-img check's report, $refused refused by qemu-img" \
  "(counts not comparable, its message asserted instead)"
done_testing
