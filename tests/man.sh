#!/bin/bash
# The man pages: they render without a single groff warning, every command
# of tools/qcowkit.c has a page that mentions every option of its help
# text, libqcowkit(3) documents every function, structure and constant of
# lib/qcowkit.h, cross-references resolve, and the library page's EXAMPLE
# compiles and runs.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require groff
scratch

doc=$srcdir/doc
pages=$(cd "$doc" && ls -- *.[1-8] 2>/dev/null | sort)
# qcowkit-problems.7 is generated from the problem table (check-table.sh checks it)
pages=$(echo "$pages" | grep -vx "qcowkit-problems.7")
if [ -z "$pages" ]; then
  fail "there are man pages in $doc"
  done_testing
  exit
fi

# Plain text of a page: no formatting, no hyphenation and lines long
# enough that nothing is broken, so options and names can be grepped.
render () {
  groff -man -Tutf8 -rLL=2000n -rHY=0 -P-c -P-b -P-o -P-u "$1" 2>/dev/null
}
# mentions TEXTFILE WORD: WORD appears as a whole word (a name or option,
# not the prefix of a longer one).
mentions () {
  grep -qE -- "(^|[^A-Za-z0-9_-])$2([^A-Za-z0-9_-]|\$)" "$1"
}

for p in $pages; do
  render "$doc/$p" > "$T/$p.txt"
done

# ---- every page renders without warnings ----
for p in $pages; do
  w=$(groff -man -Tutf8 -ww -z "$doc/$p" 2>&1)
  if [ -z "$w" ]; then
    pass "$p renders without groff warnings"
  else
    fail "$p renders without groff warnings"
    echo "$w" | head -20 | sed 's/^/#   /'
  fi
done

# ---- .TH matches the file name and section ----
for p in $pages; do
  name=${p%.*} sect=${p##*.}
  th=$(sed -n 's/^\.TH  *\([^ ]*\)  *\([^ ]*\).*/\1 \2/p' "$doc/$p" | head -1 |
       sed 's/\\-/-/g')
  want="$(echo "$name" | tr '[:lower:]' '[:upper:]') $sect"
  is "$th" "$want" "$p: .TH names the page"
done

# ---- the sections each kind of page must have ----
has_sections () {  # PAGE SECTION...
  _p=$1; shift
  _missing=
  for _s in "$@"; do
    grep -qx "\.SH \"*$_s\"*" "$doc/$_p" || _missing="$_missing [$_s]"
  done
  if [ -z "$_missing" ]; then
    pass "$_p has the required sections"
  else
    fail "$_p has the required sections" "missing:$_missing"
  fi
}
for p in $pages; do
  case $p in
    qcowkit.1)
      has_sections "$p" NAME SYNOPSIS DESCRIPTION COMMANDS "COMMON OPTIONS" \
        "EXIT STATUS" ENVIRONMENT FILES "SEE ALSO" ;;
    qcowkit-*.1)
      has_sections "$p" NAME SYNOPSIS DESCRIPTION OPTIONS OUTPUT \
        "EXIT STATUS" EXAMPLES NOTES "SEE ALSO" ;;
    libqcowkit.3)
      has_sections "$p" NAME SYNOPSIS DESCRIPTION "ERROR HANDLING" \
        "MEMORY AND LIFETIME" THREADS ABI EXAMPLE "SEE ALSO" ;;
  esac
done

# ---- every page is installed, and every installed page exists ----
listed=$(sed -n '/^dist_man_MANS *=/,/^[^	 ]/p' "$srcdir/Makefile.am" |
         grep -o 'doc/[A-Za-z0-9_.-]*\.[1-8]' | sed 's|^doc/||' | sort)
unlisted=$(comm -13 <(echo "$listed") <(echo "$pages") | tr '\n' ' ')
absent=$(comm -23 <(echo "$listed") <(echo "$pages") | tr '\n' ' ')
if [ -z "$unlisted$absent" ]; then
  pass "Makefile.am dist_man_MANS lists exactly the pages in doc/"
else
  fail "Makefile.am dist_man_MANS lists exactly the pages in doc/" \
    "in doc/ but not listed: ${unlisted:-none}" \
    "listed but not in doc/: ${absent:-none}"
fi

# ---- cross-references resolve ----
for p in $pages; do
  refs=$(grep -oE '(lib)?qcowkit[a-z-]*\([1-8]\)' "$T/$p.txt" | sort -u)
  bad=
  for r in $refs; do
    f="${r%(*}.$(echo "$r" | tr -dc '1-8')"
    # generated pages (qcowkit-problems.7) are in the build tree
    [ -f "$doc/$f" ] || [ -f "${top_builddir:-.}/doc/$f" ] || bad="$bad $r"
  done
  if [ -z "$bad" ]; then
    pass "$p: every qcowkit page it refers to exists"
  else
    fail "$p: every qcowkit page it refers to exists" "missing:$bad"
  fi
done

# ---- every command has a page, listed in qcowkit(1) ----
cmds=$(sed -n 's/^ *{ *"\([a-z0-9-]*\)", *cmd_[a-z0-9_]*,.*/\1/p' \
         "$srcdir/tools/qcowkit.c")
if [ -z "$cmds" ]; then
  fail "found the command table in tools/qcowkit.c"
fi
for c in $cmds; do
  ok "command '$c' has a page qcowkit-$c.1" test -f "$doc/qcowkit-$c.1"
  ok "qcowkit(1) lists command '$c'" mentions "$T/qcowkit.1.txt" "$c"
  ok "qcowkit-$c(1) is in the SEE ALSO of qcowkit(1)" \
    mentions "$T/qcowkit.1.txt" "qcowkit-$c\\(1\\)"
done

# ---- every option of a command's help text is on its page ----
for src in "$srcdir"/tools/cmd-*.c; do
  c=$(basename "$src" .c); c=${c#cmd-}
  page=qcowkit-$c.1
  if [ ! -f "$doc/$page" ]; then
    fail "tools/cmd-$c.c has a page $page"
    continue
  fi
  # The help text: the help[] initializer, plus any "Usage:" string.
  opts=$( { awk '/help\[\] *=/ { h = 1 } h { print } h && /;[ \t]*$/ { h = 0 }' "$src"
            grep 'Usage:' "$src"; } |
          grep -o '"[^"]*"' | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
  if [ -z "$opts" ]; then
    diag "tools/cmd-$c.c: no options in its help text"
  fi
  for o in $opts; do
    ok "$page mentions $o (from the help of tools/cmd-$c.c)" \
      mentions "$T/$page.txt" "$o"
  done
done

# ---- libqcowkit(3) documents the whole public header ----
hdr=$srcdir/lib/qcowkit.h
lib=$T/libqcowkit.3.txt
fns=$(sed -n 's/^extern [^(]*[ *]\(qk_[a-z0-9_]*\) *(.*/\1/p' "$hdr" | sort -u)
if [ -z "$fns" ] || [ ! -f "$lib" ]; then
  fail "found the functions of lib/qcowkit.h and libqcowkit.3"
fi
for f in $fns; do
  ok "libqcowkit(3) documents $f" mentions "$lib" "$f"
done
structs=$(sed -n 's/^struct \(qk_[a-z0-9_]*\) *{.*/\1/p' "$hdr" | sort -u)
types=$(sed -n 's/^typedef .*(\*\(qk_[a-z0-9_]*\)).*/\1/p' "$hdr" | sort -u)
for s in $structs $types; do
  ok "libqcowkit(3) documents $s" mentions "$lib" "$s"
done
missing=
for m in $(sed -n 's/^#define \(QK_[A-Z0-9_]*\) .*/\1/p' "$hdr" | sort -u); do
  mentions "$lib" "$m" || missing="$missing $m"
done
if [ -z "$missing" ]; then
  pass "libqcowkit(3) documents every QK_ constant of lib/qcowkit.h"
else
  fail "libqcowkit(3) documents every QK_ constant of lib/qcowkit.h" \
    "missing:$missing"
fi

# ---- the EXAMPLE of libqcowkit(3) compiles and runs ----
# The first .EX block of the EXAMPLE section, with man escapes undone.
awk '/^\.SH EXAMPLE/ { s = 1; next } s && /^\.SH / { s = 0 }
     s && /^\.EX/ { n++; if (n == 1) { e = 1; next } }
     s && /^\.EE/ { e = 0 }
     e { print }' "$doc/libqcowkit.3" |
  sed -e 's/\\e/\\/g' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g" -e 's/\\(dq/"/g' \
      -e 's/\\&//g' -e 's/\\%//g' > "$T/example.c"
cc=${CC:-cc}
# a sanitizer build's library needs the program built the same way
san=$(sed -n 's/^SAN_CFLAGS = //p' "${top_builddir:-.}/Makefile" 2>/dev/null)
libdir=${top_builddir:+$top_builddir/lib/.libs}
if ! grep -q 'main' "$T/example.c"; then
  fail "libqcowkit(3) has an example program"
elif ! command -v "$cc" >/dev/null 2>&1; then
  pass "libqcowkit(3) example compiles # SKIP no C compiler"
elif [ -z "$libdir" ] || ! ls "$libdir"/libqcowkit.so* >/dev/null 2>&1; then
  pass "libqcowkit(3) example compiles # SKIP the shared library is not built"
else
  if err=$("$cc" -std=c99 -Wall -Wextra -Werror $san -I"$srcdir/lib" \
             -o "$T/example" "$T/example.c" -L"$libdir" -lqcowkit 2>&1); then
    pass "libqcowkit(3) example compiles cleanly"
    head -c 2048 /dev/zero > "$T/disk.raw"
    out=$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            "$T/example" "$T/disk.raw" 2>&1)
    case $out in
      *"raw, virtual size 2048 bytes"*) pass "libqcowkit(3) example runs" ;;
      *) fail "libqcowkit(3) example runs" "$out" ;;
    esac
  else
    fail "libqcowkit(3) example compiles cleanly"
    echo "$err" | head -20 | sed 's/^/#   /'
  fi
fi

done_testing
