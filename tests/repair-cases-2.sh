#!/bin/bash
# The repair catalog (tests/repair-cases.sh), shard 2 of 2.
REPAIR_SHARD=2/2
. "${srcdir:-.}/tests/repair-cases.sh"
