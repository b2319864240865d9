"""The server's and PgBouncer's logs read as a stream: every refused or failed connection
attempt counted by reason, and connection setup time.

Pure parts the core drives (it owns the loop, the connection and the registry):

- a source gives bytes: `filetail.FileTail.read_available(budget)` (the log directory on this
  machine, plain file I/O) or `remote.RemoteTail` (rows of `pgce_read_log` over the target's
  held connection);
- `stream.LogStream` takes those pieces: parses them (`csvlog`, `jsonlog`, `stderr` with the
  server's `log_line_prefix`, `pgbouncer`), classifies the entries (`classify`) and counts the
  events (`counters`); its `collect()` yields the metric families.
"""
