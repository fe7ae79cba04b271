#!/usr/bin/env bash
# Records node keeping an in-memory session store: a Map of 200 000 session objects (id, user
# name, counters, last-seen time, a small list of recent paths), then every 10 ms 20 000 requests
# drawn with a skew (a few sessions are busy, most are idle) update their session, and one in
# fifty requests replaces a session with a new one (V8's young and old generations at work).
#
#   bash samples/record/node.sh
source "$(dirname "$0")/common.sh"
record_program node-$(node --version | tr -d v) -- node -e '
let seed = 1;
const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
const paths = ["/", "/login", "/cart", "/search?q=shoes", "/item/42", "/checkout", "/help"];
const session = (id) => ({ id, user: "user" + id.toString(36), hits: 0, bytes: 0,
  last: Date.now(), recent: [paths[id % paths.length]] });
const store = new Map();
for (let i = 0; i < 200000; i++) store.set(i, session(i));
let next = 200000;
setInterval(() => {
  for (let n = 0; n < 20000; n++) {
    // Skewed: the square of a uniform draw favours low ids.
    const id = Math.floor(rnd() * rnd() * next);
    const s = store.get(id);
    if (!s) continue;
    s.hits++;
    s.bytes += Math.floor(rnd() * 4096);
    s.last = Date.now();
    s.recent.push(paths[Math.floor(rnd() * paths.length)]);
    if (s.recent.length > 4) s.recent.shift();
    if (rnd() < 0.02) { store.delete(id); store.set(next, session(next)); next++; }
  }
}, 10);
'
