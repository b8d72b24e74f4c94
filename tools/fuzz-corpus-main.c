/* qcowkit-fuzz-corpus: `qcowkit fuzz-corpus` as a program of its own,
 * on the internal library (see tools/cmd-fuzz-corpus.c). argv[0] is the
 * command name, as qcowkit passes it. */
#include <config.h>

#include "tool.h"

int
main (int argc, char **argv)
{
  return cmd_fuzz_corpus (argc, argv);
}
