#!/bin/bash
# The repair catalog (tests/repair-cases.sh), shard 1 of 2.
REPAIR_SHARD=1/2
. "${srcdir:-.}/tests/repair-cases.sh"
