-- Realistic PostgreSQL statements from applications, drivers and ORMs.
-- Each entry starts with a `-- name:` line.

-- name: copy from stdin
COPY measurements FROM STDIN

-- name: copy columns from stdin csv
COPY measurements (station_id, taken_at, value) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ',')

-- name: copy query to stdout csv
COPY (SELECT id, email FROM users WHERE created_at > now() - interval '1 day') TO STDOUT WITH (FORMAT csv)

-- name: copy table to stdout binary
COPY users TO STDOUT WITH (FORMAT binary)

-- name: listen
LISTEN order_events

-- name: notify with payload
NOTIFY order_events, 'order 42 shipped'

-- name: unlisten
UNLISTEN order_events

-- name: casts
SELECT x::int, '2024-01-01'::date, $1::text[], CAST(y AS numeric(10, 2)), '{1,2,3}'::int[] FROM t

-- name: array constructor and any
SELECT ARRAY[1, 2, 3] AS a, ARRAY['x', 'y']::text[] AS b FROM t WHERE id = ANY($1::int[])

-- name: array subscripts and slices
SELECT tags[1], tags[2:3], array_length(tags, 1) FROM posts

-- name: escape strings
SELECT E'line one\nline two', E'tab\there', E'quote\'s', E'back\\slash'

-- name: dollar quoted strings
SELECT $$it's $ dollar$$, $tag$nested $$ inside$tag$

-- name: standard string with backslash
SELECT 'C:\temp\new', 'it''s'

-- name: operator syntax and collate
SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default

-- name: window functions
SELECT id, department, salary, rank() OVER (PARTITION BY department ORDER BY salary DESC) AS r, sum(salary) OVER w AS running FROM employees WINDOW w AS (PARTITION BY department ORDER BY hired_at ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)

-- name: cte with recursion
WITH RECURSIVE tree AS (SELECT id, parent_id, 1 AS depth FROM categories WHERE parent_id IS NULL UNION ALL SELECT c.id, c.parent_id, t.depth + 1 FROM categories c JOIN tree t ON c.parent_id = t.id) SELECT * FROM tree ORDER BY depth

-- name: data-modifying cte
WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING *) INSERT INTO processing SELECT * FROM moved

-- name: lateral join
SELECT u.id, recent.* FROM users u CROSS JOIN LATERAL (SELECT o.id, o.total FROM orders o WHERE o.user_id = u.id ORDER BY o.created_at DESC LIMIT 3) AS recent

-- name: left join lateral on true
SELECT u.id, o.total FROM users u LEFT JOIN LATERAL (SELECT total FROM orders WHERE user_id = u.id LIMIT 1) o ON true

-- name: upsert do update
INSERT INTO counters (name, value) VALUES ($1, 1) ON CONFLICT (name) DO UPDATE SET value = counters.value + EXCLUDED.value RETURNING value

-- name: upsert do nothing
INSERT INTO seen (hash) VALUES ($1) ON CONFLICT DO NOTHING

-- name: upsert on constraint
INSERT INTO seen (hash, n) VALUES ($1, $2) ON CONFLICT ON CONSTRAINT seen_pkey DO UPDATE SET n = seen.n + 1 WHERE seen.n < 100

-- name: update from returning
UPDATE accounts AS a SET balance = a.balance - t.amount FROM transfers t WHERE t.account_id = a.id AND t.id = $1 RETURNING a.id, a.balance

-- name: delete using
DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.disabled

-- name: merge
MERGE INTO inventory i USING incoming n ON i.sku = n.sku WHEN MATCHED THEN UPDATE SET qty = i.qty + n.qty WHEN NOT MATCHED THEN INSERT (sku, qty) VALUES (n.sku, n.qty)

-- name: jsonb operators
SELECT data -> 'user' ->> 'name', data #>> '{a,b}', data @> '{"active": true}'::jsonb, data ? 'k' FROM events

-- name: jsonb aggregate
SELECT jsonb_build_object('id', id, 'tags', jsonb_agg(tag ORDER BY tag)) FROM tags GROUP BY id

-- name: filter and within group
SELECT count(*) FILTER (WHERE status = 'open'), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) FROM tickets

-- name: distinct on
SELECT DISTINCT ON (user_id) user_id, created_at FROM logins ORDER BY user_id, created_at DESC

-- name: group by rollup having
SELECT region, product, sum(amount) FROM sales GROUP BY ROLLUP (region, product) HAVING sum(amount) > 100

-- name: exists and not exists
SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id) AND NOT EXISTS (SELECT 1 FROM bans b WHERE b.user_id = u.id)

-- name: in subquery and between
SELECT * FROM orders WHERE user_id IN (SELECT id FROM users WHERE tier = 'gold') AND created_at BETWEEN $1 AND $2

-- name: case and coalesce
SELECT CASE WHEN score >= 90 THEN 'A' WHEN score >= 80 THEN 'B' ELSE 'C' END, coalesce(nickname, name), nullif(a, b) FROM students

-- name: interval arithmetic and extract
SELECT now() - interval '7 days', extract(epoch FROM now()), date_trunc('hour', created_at) FROM events

-- name: ilike and similar and regex
SELECT * FROM users WHERE email ILIKE '%@example.com' AND name !~* '^test' AND code SIMILAR TO '[A-Z]{3}'

-- name: limit offset and fetch
SELECT * FROM items ORDER BY id LIMIT 20 OFFSET 40

-- name: union intersect except
(SELECT id FROM a UNION SELECT id FROM b) EXCEPT SELECT id FROM c

-- name: values
VALUES (1, 'one'), (2, 'two')

-- name: select for update nowait
SELECT * FROM jobs WHERE id = $1 FOR UPDATE NOWAIT

-- name: select for share
SELECT * FROM jobs WHERE id = $1 FOR SHARE

-- name: is distinct from and null tests
SELECT * FROM t WHERE a IS DISTINCT FROM b AND c IS NOT NULL AND d IS TRUE

-- name: string functions and concat
SELECT lower(name) || ' <' || email || '>', substring(name FROM 1 FOR 3), position('@' IN email), trim(both ' ' FROM name) FROM users

-- name: generate series and unnest with ordinality
SELECT * FROM unnest($1::text[]) WITH ORDINALITY AS x(value, n)

-- name: row constructor comparison
SELECT * FROM t WHERE (a, b) > ($1, $2) ORDER BY a, b LIMIT 100

-- name: schema qualified quoted identifiers
SELECT "Id", "User Name" FROM "MySchema"."MixedCase" WHERE "Id" = $1

-- name: at time zone
SELECT created_at AT TIME ZONE 'UTC' FROM events

-- name: begin isolation
BEGIN ISOLATION LEVEL SERIALIZABLE

-- name: start transaction read only
START TRANSACTION READ ONLY

-- name: savepoint
SAVEPOINT sp1

-- name: rollback to savepoint
ROLLBACK TO SAVEPOINT sp1

-- name: release savepoint
RELEASE SAVEPOINT sp1

-- name: commit
COMMIT

-- name: set search path
SET search_path TO app, public

-- name: set local
SET LOCAL statement_timeout = '5s'

-- name: set time zone
SET TIME ZONE 'UTC'

-- name: jdbc startup setting
SET extra_float_digits = 3

-- name: application name
SET application_name = 'PostgreSQL JDBC Driver'

-- name: show
SHOW transaction_isolation

-- name: sqlalchemy version probe
select pg_catalog.version()

-- name: sqlalchemy current schema
select current_schema()

-- name: sqlalchemy standard conforming strings
show standard_conforming_strings

-- name: reset
RESET search_path

-- name: discard all
DISCARD ALL

-- name: prepare and execute
PREPARE get_user (int) AS SELECT * FROM users WHERE id = $1

-- name: execute
EXECUTE get_user(42)

-- name: deallocate
DEALLOCATE get_user

-- name: declare cursor
DECLARE big CURSOR WITH HOLD FOR SELECT * FROM events ORDER BY id

-- name: fetch
FETCH 100 FROM big

-- name: close
CLOSE big

-- name: create table with constraints
CREATE TABLE IF NOT EXISTS orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE, total numeric(12, 2) NOT NULL DEFAULT 0 CHECK (total >= 0), status text NOT NULL DEFAULT 'new', created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (user_id, created_at))

-- name: create index
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_idx ON orders USING btree (user_id, created_at DESC) WHERE status <> 'done'

-- name: alter table add column
ALTER TABLE orders ADD COLUMN note text

-- name: drop table
DROP TABLE IF EXISTS tmp_import CASCADE

-- name: create view
CREATE OR REPLACE VIEW active_users AS SELECT * FROM users WHERE NOT disabled

-- name: create function plpgsql
CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated_at := now(); RETURN NEW; END$$

-- name: truncate
TRUNCATE TABLE staging RESTART IDENTITY

-- name: grant
GRANT SELECT, INSERT ON orders TO app_writer

-- name: explain analyze
EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM orders WHERE user_id = 1

-- name: vacuum and analyze
VACUUM orders

-- name: analyze table
ANALYZE orders

-- name: advisory lock
SELECT pg_advisory_lock(42)

-- name: set config for rls
SELECT set_config('app.tenant_id', '42', true)
