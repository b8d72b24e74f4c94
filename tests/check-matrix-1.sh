#!/bin/bash
# The generated damage matrix (tests/check-matrix.sh), shard 1 of 2.
MATRIX_SHARD=1/2
. "${srcdir:-.}/tests/check-matrix.sh"
