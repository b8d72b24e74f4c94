/* Fuzz the full read-only checker, --deep included. Inputs that ask for
 * more work than the bounds of fuzz.h are skipped. */
#include "fuzz.h"

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct fake_fs fs = { data, size };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs,
                               .max_chain_depth = 8, .flags = QK_OPEN_FORCE };
  struct qk_image *img;
  struct qk_check_result res;
  unsigned n = 0;

  fuzz_init ();
  if (fuzz_input_too_big (data, size))
    return 0;
  fuzz_check_threads (data, size);
  img = qk_image_open_memory (data, size, "fuzz.qcow2", &o);
  if (img == NULL)
    return 0;
  if (fuzz_image_too_big (img)) {
    qk_image_close (img);
    return 0;
  }
  if (qk_check_run (img, QK_CHECK_DEEP, fuzz_count_problem, &n, &res) == 0) {
    /* the result is consistent with what was reported */
    if (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0
        && res.warnings == 0 && res.infos == 0 && n != 0)
      __builtin_trap ();
  }
  qk_image_close (img);
  return 0;
}
