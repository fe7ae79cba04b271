#!/usr/bin/env bash
# Records python3 building and mutating dicts and lists (the interpreter's own allocator and
# garbage collector at work): a dict of 200 000 entries whose values are rewritten, lists grown
# and trimmed, strings created and dropped.
#
#   bash samples/record/python.sh          (as root: the recorder reads /proc/PID/pagemap and memory)
source "$(dirname "$0")/common.sh"
record_program python3-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') -- python3 -c '
import random, time
random.seed(1)
table = {i: [i] * 4 for i in range(200_000)}
log = []
while True:
    for _ in range(20_000):
        k = random.randrange(200_000)
        table[k] = [k, random.random(), str(k) * 3]
    log.append([str(random.random()) for _ in range(500)])
    if len(log) > 200:
        del log[:100]
    time.sleep(0.01)
'
