#!/bin/sh
# A fresh cluster in a temporary directory, then the server on $PGPORT, loopback only (the
# container shares the host's network), password (SCRAM) authentication for $POSTGRES_USER.
set -eu
: "${POSTGRES_PASSWORD:?give the superuser a password: POSTGRES_PASSWORD}"
dir=$(mktemp -d)
printf '%s\n' "$POSTGRES_PASSWORD" > "$dir/pwfile"
initdb --pgdata="$dir/data" --username="$POSTGRES_USER" --pwfile="$dir/pwfile" \
  --auth=scram-sha-256 --encoding=UTF8 --no-locale --no-sync >/dev/null
rm "$dir/pwfile"
exec postgres -D "$dir/data" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$dir" "$@"
