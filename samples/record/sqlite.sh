#!/usr/bin/env bash
# Records sqlite3 loading and updating an in-memory database: 200 000 rows inserted, then
# batches of updates, inserts and deletes fed through its standard input (text values: keys are
# random hex, values formatted text, as an application table would hold).
#
#   bash samples/record/sqlite.sh
source "$(dirname "$0")/common.sh"
feed() {
  echo "PRAGMA cache_size=-65536;"
  echo "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB);"
  echo "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200000)"
  echo "  INSERT INTO t SELECT i, hex(randomblob(8)), printf('row %d: %s', i, hex(randomblob(40))) FROM n;"
  echo "CREATE INDEX tk ON t(k);"
  local round=0
  while true; do
    round=$((round + 1))
    echo "UPDATE t SET v = printf('updated %d in round $round', id) WHERE id % 97 = $((round % 97));"
    echo "INSERT INTO t(k, v) SELECT hex(randomblob(8)), printf('copy of %d', id) FROM t LIMIT 500;"
    echo "DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 400);"
    sleep 0.05
  done
}
version=$(sqlite3 --version | awk '{print $1}')
# sqlite3 reads the statements from a FIFO; the recorded process is sqlite3 itself (exec).
fifo_dir=$(mktemp -d "${TMPDIR:-/tmp}/sqlite-feed.XXXXXX")
mkfifo "$fifo_dir/sql"
feed >"$fifo_dir/sql" &
feeder=$!
record_program sqlite3-$version -- bash -c 'exec sqlite3 :memory: <"$0"' "$fifo_dir/sql"
kill "$feeder" 2>/dev/null || true
rm -rf "$fifo_dir"
