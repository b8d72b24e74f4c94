#!/bin/bash
# The exported symbols, lib/qcowkit.h and lib/libqcowkit.syms agree, and the
# shared library exports nothing else.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require nm
scratch

hdr=$(sed -n 's/^extern [^(]*[ *]\(qk_[a-z0-9_]*\) *(.*/\1/p' "$srcdir/lib/qcowkit.h" | sort -u)
syms=$(sed -n 's/^ *\(qk_[a-z0-9_]*\);.*/\1/p' "$srcdir/lib/libqcowkit.syms" | sort -u)
is "$(echo "$hdr" | wc -l)" "$(echo "$syms" | wc -l)" "as many symbols in the header as in the version script"
d=$(diff <(echo "$hdr") <(echo "$syms"))
if [ -z "$d" ]; then pass "header and version script list the same functions"; else fail "header and version script differ" $d; fi

so=$(ls "$top_builddir"/lib/.libs/libqcowkit.so.*.*.* 2>/dev/null | head -1)
if [ -z "$so" ]; then
  fail "shared library built"
else
  exp=$(nm -D --defined-only "$so" | awk '$2 == "T" {print $3}' | sed 's/@.*//' | sort -u)
  d=$(diff <(echo "$syms") <(echo "$exp"))
  if [ -z "$d" ]; then pass "the shared library exports exactly the listed symbols"; else fail "exports differ" $d; fi
  ver=$(nm -D --defined-only "$so" | grep -c '@@QCOWKIT_[0-9]')
  ok "every symbol carries a QCOWKIT_ version node" test "$ver" -ge "$(echo "$syms" | wc -l)"
  # each symbol is exported in the node the .syms file puts it in
  bad=
  node=
  while read -r l; do
    case $l in
      QCOWKIT_*) node=${l%% *} ;;
      qk_*) n=${l%;}; nm -D --defined-only "$so" | grep -q " $n@@$node\$" || bad="$bad $n" ;;
    esac
  done < "$srcdir/lib/libqcowkit.syms"
  is "$bad" "" "every symbol is exported in its own version node"
fi
# The public header compiles alone as ISO C99 and as C++.
printf '#include "qcowkit.h"\nint main (void) { return qk_get_errno (); }\n' > "$T/c99.c"
ok "qcowkit.h compiles as ISO C99 with -pedantic" \
  ${CC:-cc} -std=c99 -pedantic -Werror -Wall -I"$srcdir/lib" -c "$T/c99.c" -o "$T/c99.o"
if have g++ "qcowkit.h compiles as C++"; then
  cp "$T/c99.c" "$T/cxx.cc"
  ok "qcowkit.h compiles as C++" g++ -Wall -Werror -I"$srcdir/lib" -c "$T/cxx.cc" -o "$T/cxx.o"
fi
done_testing
