"""Exercises psycopg 3 against one database connection string and prints a JSON summary.

Usage: psycopg_check.py DSN SCRATCH_TABLE [DENIED_DSN]

Run by tests/tests/clients_psycopg.rs twice: once straight to the database and once
through Portcullis, after which the two summaries are compared. DSN must be allowed to
create SCRATCH_TABLE. With DENIED_DSN (a read-only user through the proxy) the script
also checks that a refused statement raises InsufficientPrivilege and that the
connection stays usable.

Every value in the summary is made JSON-safe with repr-like strings so that types
(Decimal, datetime, bytes) are compared exactly, not just their numeric value.
"""

import hashlib
import json
import sys

import psycopg
from psycopg import sql


def show(value):
    """A JSON-safe rendering that keeps the Python type visible."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [show(v) for v in value]
    if isinstance(value, dict):
        return {k: show(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    if isinstance(value, float):
        return "float:" + value.hex()
    return f"{type(value).__name__}:{value!s}"


def params_section(conn):
    cur = conn.cursor()
    cur.execute("SELECT %s::int + 1", (41,))
    plus = cur.fetchone()[0]
    cur.execute(
        "SELECT %s::text, %s::text IS NULL, %s::numeric * 2, %s::float8, %s::bool",
        ("it's \"quoted\" \\ $1 %s", None, "12.345", 0.1, True),
    )
    return {"plus_one": plus, "mixed": show(cur.fetchone())}


def prepared_section(conn):
    counts = []
    for customer in range(1, 11):
        row = conn.execute(
            "SELECT count(*) FROM orders WHERE customer_id = %s", (customer,), prepare=True
        ).fetchone()
        counts.append(row[0])
    # The statement really was prepared on the server under a name, and reused.
    names = conn.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
        ("%FROM orders WHERE customer_id = $1%",),
    ).fetchone()[0]
    return {"counts": counts, "server_prepared": names}


def binary_section(conn):
    cur = conn.cursor(binary=True)
    cur.execute(
        "SELECT o.id, o.customer_id, o.total, o.status, o.created_at, c.birth_date, c.email "
        "FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE o.total > %s ORDER BY o.id LIMIT 50",
        (100,),
    )
    rows = [show(r) for r in cur.fetchall()]
    cur.execute(
        "SELECT %b::bytea, %b::int4[], %b::jsonb, %b::text, %b::date",
        (bytes(range(256)), [1, None, -3], psycopg.types.json.Jsonb({"a": [1, None]}), None, "2024-02-29"),
    )
    typed = show(cur.fetchone())
    # 1: the server sent the columns in binary.
    result_format = cur.pgresult.fformat(0)
    return {"rows": rows, "typed": typed, "result_format": result_format}


def executemany_section(conn, table):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text, amount numeric(10,2))").format(sql.Identifier(table)))
        cur.executemany(
            sql.SQL("INSERT INTO {} (id, note, amount) VALUES (%s, %s, %s)").format(sql.Identifier(table)),
            [(i, None if i % 7 == 0 else f"note {i}", f"{i}.{i % 100:02d}") for i in range(500)],
        )
        cur.execute(sql.SQL("SELECT count(*), count(note), sum(amount) FROM {}").format(sql.Identifier(table)))
        summary = show(cur.fetchone())
    conn.commit()
    return summary


def copy_section(conn, table):
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT * FROM customers ORDER BY id) TO STDOUT") as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
        with cur.copy(sql.SQL("COPY {} (id, note, amount) FROM STDIN").format(sql.Identifier(table))) as copy:
            for i in range(1000, 3000):
                copy.write_row((i, f"copied\t{i}", f"{i}.5"))
        cur.execute(sql.SQL("SELECT count(*), sum(amount) FROM {} WHERE id >= 1000").format(sql.Identifier(table)))
        copied = show(cur.fetchone())
    conn.commit()
    return {
        "out_bytes": len(out),
        "out_sha256": hashlib.sha256(out).hexdigest(),
        "out_lines": out.count(b"\n"),
        "in": copied,
    }


def named_cursor_section(conn):
    batches = []
    total = 0
    rows = 0
    with conn.transaction():
        with conn.cursor(name="portcullis_c") as cur:
            cur.itersize = 97
            cur.execute("SELECT id, total FROM orders ORDER BY id")
            while True:
                batch = cur.fetchmany(97)
                if not batch:
                    break
                batches.append(len(batch))
                rows += len(batch)
                total += sum(r[0] for r in batch)
    return {"rows": rows, "id_sum": total, "batches": batches}


def pipeline_section(conn, table):
    with conn.pipeline():
        c1 = conn.execute("SELECT count(*) FROM customers")
        c2 = conn.execute(sql.SQL("UPDATE {} SET note = upper(note) WHERE id < %s").format(sql.Identifier(table)), (50,))
        c3 = conn.execute(sql.SQL("SELECT string_agg(coalesce(note, '-'), ',' ORDER BY id) FROM {} WHERE id < 10").format(sql.Identifier(table)))
        c4 = conn.execute("SELECT %s::int * 3", (14,))
    out = {
        "customers": c1.fetchone()[0],
        "updated": c2.rowcount,
        "notes": c3.fetchone()[0],
        "times3": c4.fetchone()[0],
    }
    conn.rollback()
    # An error inside a pipeline aborts the rest of its batch; the connection recovers.
    errors = []
    try:
        with conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1 / 0")
            conn.execute("SELECT 3")
    except psycopg.Error as e:
        errors.append(type(e).__name__)
    conn.rollback()
    out["error"] = errors
    out["after_error"] = conn.execute("SELECT 'recovered'").fetchone()[0]
    conn.rollback()
    return out


def session_section(conn):
    """Settings changed mid-session: the server reports them in ParameterStatus, which
    psycopg reads to adapt (time zone, date style)."""
    conn.execute("SET application_name = 'changed mid-session'")
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    conn.execute("SET DateStyle = 'ISO, DMY'")
    out = {
        "application_name": conn.info.parameter_status("application_name"),
        "timezone": conn.info.parameter_status("TimeZone"),
        "datestyle": conn.info.parameter_status("DateStyle"),
        "timestamptz": show(conn.execute("SELECT '2020-01-01 00:00+00'::timestamptz").fetchone()[0]),
        "as_text": conn.execute("SELECT '2020-01-31 12:00+00'::timestamptz::text").fetchone()[0],
        "dmy": conn.execute("SELECT '01/02/2020'::date::text").fetchone()[0],
    }
    conn.execute("RESET ALL")
    out["after_reset"] = conn.info.parameter_status("TimeZone") != "Asia/Kolkata"
    return out


def denied_section(dsn):
    out = {}
    # Direct TLS (no SSLRequest; ALPN "postgresql") needs libpq 17 or later.
    if psycopg.pq.version() >= 170000:
        with psycopg.connect(dsn + " sslnegotiation=direct", autocommit=True) as conn:
            out["direct_tls"] = "ok" if conn.pgconn.ssl_in_use and conn.execute("SELECT 1").fetchone()[0] == 1 else "no TLS"
    else:
        out["direct_tls"] = f"skipped: libpq {psycopg.pq.version()}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        out["ssl_in_use"] = conn.pgconn.ssl_in_use
        try:
            conn.execute("DELETE FROM orders WHERE id = %s", (1,))
            out["autocommit"] = "not denied"
        except psycopg.errors.InsufficientPrivilege as e:
            out["autocommit"] = {"sqlstate": e.sqlstate, "message": e.diag.message_primary}
        out["autocommit_after"] = conn.execute("SELECT 'still usable'").fetchone()[0]
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        try:
            conn.execute("UPDATE orders SET status = 'paid'", prepare=True)
            out["in_transaction"] = "not denied"
        except psycopg.errors.InsufficientPrivilege as e:
            out["in_transaction"] = {"sqlstate": e.sqlstate, "status": conn.info.transaction_status.name}
        conn.rollback()
        out["transaction_after"] = conn.execute("SELECT %s::text", ("still usable",)).fetchone()[0]
        conn.rollback()
        # A denial in the middle of a pipeline fails that statement, like a server error.
        errors = []
        try:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("DELETE FROM orders")
                conn.execute("SELECT 3")
        except psycopg.Error as e:
            errors.append([type(e).__name__, e.sqlstate])
        conn.rollback()
        out["pipeline"] = errors
        out["pipeline_after"] = conn.execute("SELECT 'recovered'").fetchone()[0]
    return out


def main():
    dsn, table = sys.argv[1], sys.argv[2]
    denied_dsn = sys.argv[3] if len(sys.argv) > 3 else None
    summary = {}
    with psycopg.connect(dsn) as conn:
        summary["server_version"] = conn.info.server_version
        summary["params"] = params_section(conn)
        conn.rollback()
        summary["prepared"] = prepared_section(conn)
        conn.rollback()
        summary["binary"] = binary_section(conn)
        conn.rollback()
        summary["executemany"] = executemany_section(conn, table)
        summary["copy"] = copy_section(conn, table)
        summary["named_cursor"] = named_cursor_section(conn)
        summary["pipeline"] = pipeline_section(conn, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        summary["session"] = session_section(conn)
    if denied_dsn:
        summary["denied"] = denied_section(denied_dsn)
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
