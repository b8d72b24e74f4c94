#!/bin/bash
# The check catalog (tests/check-cases.sh), shard 2 of 4: four TAP tests,
# so that make -j runs the ~110 cases side by side.
CHECK_SHARD=2/4
. "${srcdir:-.}/tests/check-cases.sh"
