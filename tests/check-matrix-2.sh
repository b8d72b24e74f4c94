#!/bin/bash
# The generated damage matrix (tests/check-matrix.sh), shard 2 of 2.
MATRIX_SHARD=2/2
. "${srcdir:-.}/tests/check-matrix.sh"
