"""LISTEN/NOTIFY with psycopg 3: does a notification name the sender the way the
client knows it?

Usage: psycopg_notify.py DSN

libpq documents NotificationResponse's process id as the notifying backend's, and
clients compare it with PQbackendPID() (psycopg: conn.info.backend_pid) to recognise
their own notifications. Prints a JSON summary.
"""

import json
import sys

import psycopg


def main():
    dsn = sys.argv[1]
    out = {}
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as other:
        listener.execute("LISTEN portcullis_pids")
        listener.execute("NOTIFY portcullis_pids, 'from myself'")
        other.execute("NOTIFY portcullis_pids, 'from the other session'")
        received = []
        for n in listener.notifies(timeout=10, stop_after=2):
            received.append(n)
        out["payloads"] = [n.payload for n in received]
        out["channels"] = [n.channel for n in received]
        by_payload = {n.payload: n.pid for n in received}
        out["own_pid_matches"] = by_payload.get("from myself") == listener.info.backend_pid
        out["other_pid_matches"] = by_payload.get("from the other session") == other.info.backend_pid
        out["pids_differ"] = listener.info.backend_pid != other.info.backend_pid
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
