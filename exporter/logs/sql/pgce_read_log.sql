-- pg-connections-exporter: read the server's log over the target's held connection, for an
-- exporter that runs where the log files are not. Run as a superuser in the database the
-- exporter connects to, then grant EXECUTE to its role (replace pgce_monitor):
--
--   psql -d postgres -f pgce_read_log.sql
--   GRANT EXECUTE ON FUNCTION pgce_read_log(text, bigint, integer) TO pgce_monitor;
--
-- Why not `GRANT EXECUTE ON FUNCTION pg_read_binary_file(...)`: that function reads any file
-- the server's operating-system user can (postgresql.conf, pg_hba.conf, the server key, every
-- table's data files under base/), so the grant would hand the monitoring role all of it.
-- This function reads only a file that pg_ls_logdir() lists (the log directory's own regular
-- files, by exact name): no path, no `..`, no absolute name gets through.

CREATE OR REPLACE FUNCTION pgce_read_log(file_name text, file_offset bigint, max_bytes integer)
RETURNS bytea
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    dir text := current_setting('log_directory');
BEGIN
    IF file_offset < 0 OR max_bytes < 0 OR max_bytes > 16777216 THEN
        RAISE EXCEPTION 'pgce_read_log: file_offset must be >= 0 and max_bytes 0..16777216'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF strpos(file_name, '/') > 0
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_ls_logdir() AS l WHERE l.name = file_name) THEN
        RAISE EXCEPTION 'pgce_read_log: % is not a file of the log directory', quote_literal(file_name)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- missing_ok: a file rotated away between the listing and the read gives NULL.
    RETURN pg_catalog.pg_read_binary_file(dir || '/' || file_name, file_offset, max_bytes, true);
END
$function$;

REVOKE ALL ON FUNCTION pgce_read_log(text, bigint, integer) FROM PUBLIC;
