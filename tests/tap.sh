# TAP helpers for shell tests. Source it, then call plan-free helpers and
# finish with `done_testing`.
tap_n=0
tap_failed=0

ok () {  # ok DESCRIPTION COMMAND...
  _d=$1; shift
  tap_n=$((tap_n + 1))
  if "$@"; then
    echo "ok $tap_n - $_d"
  else
    echo "not ok $tap_n - $_d"
    tap_failed=$((tap_failed + 1))
  fi
}

pass () { tap_n=$((tap_n + 1)); echo "ok $tap_n - $1"; }
fail () {
  tap_n=$((tap_n + 1)); tap_failed=$((tap_failed + 1))
  echo "not ok $tap_n - $1"
  shift
  for l in "$@"; do echo "#   $l"; done
}
diag () { echo "# $*"; }

# is GOT WANT DESCRIPTION
is () {
  if [ "$1" = "$2" ]; then pass "$3"; else fail "$3" "got:  $1" "want: $2"; fi
}

# A missing oracle skips the whole test on a developer machine, but fails
# under CI=true, where CI must have installed it.
require () {  # require CMD...
  for _c in "$@"; do
    if ! command -v "$_c" >/dev/null 2>&1; then
      if [ "${CI:-}" = true ]; then
        echo "1..1"
        echo "not ok 1 - required oracle '$_c' is missing under CI=true"
        exit 1
      fi
      echo "1..0 # SKIP $_c not installed"
      exit 0
    fi
  done
}

# have CMD DESCRIPTION: whether CMD is installed, for the part of a test
# (DESCRIPTION) that needs it; the rest of the test runs anyway. Missing,
# the part is one TAP SKIP line on a developer machine, and one failure
# under CI=true, where CI must have installed it.
have () {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "${CI:-}" = true ]; then
    fail "$2: required oracle '$1' is missing under CI=true"
  else
    pass "$2 # SKIP $1 not installed"
  fi
  return 1
}

# Sanitizer builds (ASan reserves terabytes of shadow address space):
# ulimit -v cannot bound them, so memory bounds hold in normal builds only;
# and LeakSanitizer cannot run under ptrace, so traced runs go without it.
tap_san=false
if grep -q __asan_init "$(command -v qcowkit 2>/dev/null)" 2>/dev/null; then
  tap_san=true
fi
vlimited () {  # vlimited KIB CMD...: CMD under ulimit -v KIB (not under ASan)
  local kib=$1; shift
  if $tap_san; then "$@"; else (ulimit -v "$kib"; "$@"); fi
}
traced_env () {  # traced_env CMD...: CMD with leak detection off (strace)
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$@"
}

done_testing () {
  # how long the test took, for whoever trims the suite (never asserted)
  echo "# ran in ${SECONDS} s"
  echo "1..$tap_n"
  [ "$tap_failed" -eq 0 ]
}

# at_exit COMMAND: run COMMAND when the test exits, however it exits,
# before the commands registered earlier (a process a test starts is
# killed here, so that it never outlives the test). Killed by TERM or HUP,
# bash runs them and dies at once; interrupted (INT), the test exits
# through them with status 130 once the command in the foreground has
# returned (bash alone would go on when that command exits normally).
# (Bash 5.2 can lose a trap that arrives while it parses a command
# substitution: a process started in the background should also end by
# itself when the test does, as start_holder's does.)
tap_at_exit=:
at_exit () {
  tap_at_exit="$1; $tap_at_exit"
  trap "$tap_at_exit" EXIT
  trap 'exit 130' INT
}

# A scratch directory removed at exit.
scratch () {
  T=$(mktemp -d "${TMPDIR:-/tmp}/qcowkit-test.XXXXXX")
  at_exit 'rm -rf "$T"'
}
