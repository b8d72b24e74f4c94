#!/bin/bash
# The layers of lib/meta (issue #12): no file includes the header of a
# layer above its own, nor calls a function defined in one. The order, as
# stated at the top of lib/meta/meta.h, bottom first:
#
#   0  model                      the model, problem rows, links
#   1  xml, paths                 XML layer; directories, sysroot, layout
#   2  load                       loading files into the model
#   3  relations, crosscheck      the checks
#   4  metacheck                  qk_meta_check, the check driver
#   5  meta.h, edit, convert, repair, delete, revert, host   the writers
#
# Within layers 0 to 4 a file includes only its own header of its layer
# (xml.c may not include paths.h); the writers may use one another. The
# check reads the #include lines and, for calls, every non-static function
# defined in lib/meta/*.c (GNU style: its name at the start of a line)
# against each other file with comments stripped. A planted upward include
# and call must be caught, so that the check is not vacuous.
srcdir=${srcdir:-.}
. "$srcdir/tests/tap.sh"
require perl
scratch
: "${T:?scratch sets T}"

layers='model=0 xml=1 paths=1 load=2 relations=3 crosscheck=3 metacheck=4
meta=5 edit=5 convert=5 repair=5 delete=5 revert=5 host=5'

# check DIR: one line per violation on stdout
check () {
  LAYERS=$layers perl -e '
    use strict; use warnings;
    my $dir = shift;
    my %L = map { split /=/ } split " ", $ENV{LAYERS};
    my (%text, %layer, %def, @out);
    for my $f (sort glob "$dir/*.[ch]") {
      (my $b = $f) =~ s{.*/}{};
      (my $base = $b) =~ s/\.[ch]$//;
      if (!exists $L{$base}) { push @out, "$b: no layer"; next }
      $layer{$b} = $L{$base};
      open my $fh, "<", $f or die "$f: $!";
      local $/; my $t = <$fh>; close $fh;
      $text{$b} = $t;
      # includes
      while ($t =~ m{^\s*#\s*include\s+"meta/([a-z_]+)\.h"}mg) {
        my $h = $1;
        if (!exists $L{$h}) { push @out, "$b includes meta/$h.h: no layer"; next }
        push @out, "$b (layer $L{$base}) includes meta/$h.h (layer $L{$h})"
          if $L{$h} > $L{$base}
             || ($L{$h} == $L{$base} && $L{$base} < 5 && $h ne $base);
      }
      # definitions: name at the start of a line, the line before not static
      next unless $b =~ /\.c$/;
      my @l = split /\n/, $t;
      for my $i (1 .. $#l) {
        next unless $l[$i] =~ /^([a-z_][a-z0-9_]*) \(/;
        next if $l[$i - 1] =~ /^static\b/ || $l[$i - 1] =~ /^\s*$/;
        $def{$1} = $b;
      }
    }
    # calls: a function of a higher layer (or, below the writers, of
    # another file of the same layer) named in code, comments stripped
    for my $b (sort keys %text) {
      (my $t = $text{$b}) =~ s{/\*.*?\*/}{}gs;
      for my $fn (sort keys %def) {
        my $d = $def{$fn};
        next if $d eq $b;
        (my $db = $d) =~ s/\.c$//; (my $bb = $b) =~ s/\.[ch]$//;
        next if $db eq $bb;      # a file and its own header
        my ($lf, $ld) = ($layer{$b}, $layer{$d});
        next unless $ld > $lf || ($ld == $lf && $lf < 5);
        push @out, "$b (layer $lf) calls $fn of $d (layer $ld)"
          if $t =~ /\b\Q$fn\E \(/;
      }
    }
    print "$_\n" for @out;
    printf STDERR "%d files, %d functions\n", scalar keys %text,
      scalar keys %def;
  ' "$1"
}

meta=$srcdir/lib/meta
v=$(check "$meta" 2>"$T/count")
is "$v" "" "lib/meta: every file has a layer, no include and no call goes up"
diag "$(cat "$T/count")"
# the count keeps the check honest: it saw the files and their functions
ok "the check saw at least 20 files and 80 functions" \
  awk '$1 >= 20 && $3 >= 80 { f = 1 } END { exit !f }' "$T/count"

# planted: the model includes meta.h; xml.c calls the check driver;
# relations.c calls crosscheck.c (same layer); a new file has no layer
mkdir "$T/m"
cp "$meta"/*.[ch] "$T/m/"
sed -i 's|#include "meta/model.h"|#include "meta/meta.h"|' "$T/m/model.c"
printf 'static void up (struct qk_meta *m) { qk_meta_check (m, 0, NULL, NULL); }\n' >> "$T/m/xml.c"
printf 'static void side (struct qk_meta *m) { meta_check_images (m, NULL); }\n' >> "$T/m/relations.c"
: > "$T/m/stray.c"
v=$(check "$T/m" 2>/dev/null)
is "$(echo "$v" | sort)" "$(printf '%s\n' \
  'model.c (layer 0) includes meta/meta.h (layer 5)' \
  'relations.c (layer 3) calls meta_check_images of crosscheck.c (layer 3)' \
  'stray.c: no layer' \
  'xml.c (layer 1) calls qk_meta_check of metacheck.c (layer 4)' | sort)" \
  "a planted upward include and call, a sideways call, a stray file: each caught"

done_testing
