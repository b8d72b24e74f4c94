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
#   args: --deep               extra qcowkit check options (optional)
#   message: ERE               some problem's message matches this extended
#                              regular expression (optional, repeatable)
#   qemu: same                 (the default) qemu-img check --output=json on
#                              the same image gives the same exit status,
#                              corruptions and leaks
#   qemu: differs REASON       ours is more exact, for REASON; then
#   qemu-exit: N               qemu-img's own values are asserted, so the
#   qemu-corruptions: N        difference stays documented and tested
#   qemu-leaks: N
#   qemu-cmd: COMMAND          how to run qemu-img check (optional; a shell
#                              command using $IMG, e.g. for encryption keys)
#
# Each case also proves the check did not modify the image (sha256 and
# mtime). At the end, every code of the problem table must be expected by
# some case or listed in tests/check/UNTRIGGERED with the reason.
#
# CHECK_CASES="name1 name2" runs only those cases.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require qemu-img qemu-io jq qkpoke
scratch

cases_dir=$(cd "$srcdir/tests/check" && pwd)
start=$(date +%s)

# expect_get FILE KEY: the value of "KEY: value" (first match), or nothing.
expect_get () {
  sed -n "s/^$2:[[:space:]]*//p" "$1" | head -1
}

# json_get FILE FILTER: a number from a JSON document; 0 when absent or
# when the file is not JSON (qemu-img prints nothing when it cannot open).
json_num () {
  local v
  v=$(jq -r "(if type == \"array\" then .[0] else . end) | ($2 // 0)" \
        "$1" 2>/dev/null | head -1)
  echo "${v:-0}"
}

# chk GOT WANT DESCRIPTION: is, returning whether it passed.
chk () { is "$@"; [ "$1" = "$2" ]; }

stamp () { echo "$(sha256sum < "$1" | cut -d' ' -f1) $(stat -c %y "$1")"; }

all_expected=
ran=0
for dir in "$cases_dir"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/script" ] || continue
  if [ -n "${CHECK_CASES:-}" ] && ! [[ " $CHECK_CASES " == *" $name "* ]]; then
    all_expected="$all_expected $(expect_get "$dir/expect" codes)"
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

  want_codes=$(expect_get "$exp" codes)
  all_expected="$all_expected $want_codes"
  want_exit=$(expect_get "$exp" exit)
  want_c=$(expect_get "$exp" corruptions)
  want_l=$(expect_get "$exp" leaks)
  args=$(expect_get "$exp" args)
  qemu=$(expect_get "$exp" qemu)
  qemu=${qemu:-same}
  qcmd=$(expect_get "$exp" qemu-cmd)

  before=$(stamp "$IMG")
  # shellcheck disable=SC2086
  (cd "$w" && qcowkit check --output=json $args "$IMG") > "$w/ours.json" \
    2> "$w/ours.err"
  rc=$?
  after=$(stamp "$IMG")

  codes=$(jq -r '(if type == "array" then .[0] else . end) |
                 [.problems[].code] | unique | join(" ")' \
            "$w/ours.json" 2>/dev/null)
  c=$(json_num "$w/ours.json" .corruptions)
  l=$(json_num "$w/ours.json" .leaks)
  ours_diag () {
    diag "qcowkit check: exit $rc, stderr: $(head -c 600 "$w/ours.err")"
    jq -r '(if type == "array" then .[0] else . end) | .problems[] |
           "#   \(.code) \(.class) \(.message)"' "$w/ours.json" \
      2>/dev/null | head -n 15
  }
  ok_all=true
  chk "$rc" "$want_exit" "$name: exit status" || ok_all=false
  chk "$codes" "$want_codes" "$name: problem codes" || ok_all=false
  chk "$c" "${want_c:-0}" "$name: corruptions" || ok_all=false
  chk "$l" "${want_l:-0}" "$name: leaks" || ok_all=false
  while IFS= read -r re; do
    [ -n "$re" ] || continue
    jq -r '(if type == "array" then .[0] else . end) | .problems[].message' \
      "$w/ours.json" 2>/dev/null | grep -Eq -- "$re"
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
  qc=$(json_num "$w/qemu.json" .corruptions)
  ql=$(json_num "$w/qemu.json" .leaks)
  qemu_diag () {
    diag "qemu-img check: exit $qrc, corruptions $qc, leaks $ql"
    head -n 12 "$w/qemu.err" | sed 's/^/#   /'
  }
  case $qemu in
    same)
      q_ok=true
      chk "$qrc" "$rc" "$name: qemu-img gives the same exit status" || q_ok=false
      chk "$qc" "$c" "$name: qemu-img counts the same corruptions" || q_ok=false
      chk "$ql" "$l" "$name: qemu-img counts the same leaks" || q_ok=false
      $q_ok || qemu_diag
      ;;
    differs*)
      reason=${qemu#differs}
      q_ok=true
      chk "$qrc" "$(expect_get "$exp" qemu-exit)" \
        "$name: qemu-img exit status (documented difference)" || q_ok=false
      chk "$qc" "$(expect_get "$exp" qemu-corruptions)" \
        "$name: qemu-img corruptions (documented difference)" || q_ok=false
      chk "$ql" "$(expect_get "$exp" qemu-leaks)" \
        "$name: qemu-img leaks (documented difference)" || q_ok=false
      if [ -n "${reason# }" ] && [ "$qrc $qc $ql" != "$rc $c $l" ]; then
        pass "$name: the documented difference from qemu-img is real"
      else
        fail "$name: the documented difference from qemu-img is real" \
          "reason: ${reason:-none given}" "ours: $rc $c $l, qemu-img: $qrc $qc $ql"
      fi
      $q_ok || qemu_diag
      ;;
    *)
      fail "$name: 'qemu:' is 'same' or 'differs REASON'" "got: $qemu"
      ;;
  esac
done

# ---- every code is triggered by some case, or allow-listed with a reason ----
if [ -z "${CHECK_CASES:-}" ]; then
  qcowkit check --list-problems | awk '{print $1}' > "$T/codes"
  untrig=$cases_dir/UNTRIGGERED
  expected=$(echo "$all_expected" | tr ' ' '\n' | grep . | sort -u)
  allowed=$(sed -n 's/^\(0x[0-9a-f]\{6\}\)[[:space:]].*/\1/p' "$untrig" 2>/dev/null | sort -u)
  missing=
  for code in $(cat "$T/codes"); do
    if ! grep -qx "$code" <<< "$expected" && ! grep -qx "$code" <<< "$allowed"; then
      missing="$missing $code"
    fi
  done
  is "${missing# }" "" "every problem code is triggered by a case or in tests/check/UNTRIGGERED"
  stale=
  for code in $allowed; do
    grep -qx "$code" <<< "$expected" && stale="$stale $code"
    grep -qx "$code" "$T/codes" || stale="$stale $code(unknown)"
  done
  is "${stale# }" "" "tests/check/UNTRIGGERED lists only codes no case triggers"
  noreason=$(grep -E '^0x[0-9a-f]{6}[[:space:]]*$' "$untrig" 2>/dev/null)
  is "$noreason" "" "every line of tests/check/UNTRIGGERED gives a reason"
  unknown=
  for code in $expected; do
    grep -qx "$code" "$T/codes" || unknown="$unknown $code"
  done
  is "${unknown# }" "" "every expected code exists in the problem table"
  ok "the catalog has at least 40 cases ($ran)" test "$ran" -ge 40
fi
diag "$ran cases in $(( $(date +%s) - start )) s"
done_testing
