# Fuzzing: included by Makefile.am. See fuzz/README.md and doc/FUZZING.md.
# Each harness builds twice: with a replay main (fuzz/standalone.c) for
# make check and AFL++, and with --enable-fuzzing as a libFuzzer binary.
FUZZ_HARNESSES = image read check
FUZZ_COMMON = fuzz/fuzz.h
FUZZ_REPLAY_LDADD = lib/libqcowkit-internal.la $(ZLIB_LIBS)
fuzz_fuzz_image_replay_SOURCES = fuzz/fuzz-image.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_image_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_read_replay_SOURCES = fuzz/fuzz-read.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_read_replay_LDADD = $(FUZZ_REPLAY_LDADD)
fuzz_fuzz_check_replay_SOURCES = fuzz/fuzz-check.c fuzz/standalone.c $(FUZZ_COMMON)
fuzz_fuzz_check_replay_LDADD = $(FUZZ_REPLAY_LDADD)
if ENABLE_FUZZING
noinst_PROGRAMS = fuzz/fuzz-image fuzz/fuzz-read fuzz/fuzz-check
fuzz_fuzz_image_SOURCES = fuzz/fuzz-image.c $(FUZZ_COMMON)
fuzz_fuzz_image_LDADD = lib/libqcowkit-internal.la
fuzz_fuzz_image_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_read_SOURCES = fuzz/fuzz-read.c $(FUZZ_COMMON)
fuzz_fuzz_read_LDADD = lib/libqcowkit-internal.la
fuzz_fuzz_read_LDFLAGS = $(FUZZ_LDFLAGS)
fuzz_fuzz_check_SOURCES = fuzz/fuzz-check.c $(FUZZ_COMMON)
fuzz_fuzz_check_LDADD = lib/libqcowkit-internal.la
fuzz_fuzz_check_LDFLAGS = $(FUZZ_LDFLAGS)
endif

check_PROGRAMS += \
	fuzz/fuzz-image-replay \
	fuzz/fuzz-read-replay \
	fuzz/fuzz-check-replay \
	$(NULL)
SH_TESTS += tests/fuzz-replay.sh
EXTRA_DIST += fuzz/README.md fuzz/local.mk tests/regress
