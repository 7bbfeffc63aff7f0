-- Portcullis quickstart: deterministic demo data (load after schema.sql, into an empty database).
--   psql -v ON_ERROR_STOP=1 -d quickstart -f schema.sql -f data.sql
--
-- Nothing here calls random(): every "random" choice is a hash of a label and a row number
-- (pg_temp.h below), so every load produces byte-identical rows. Timestamps count back from a
-- fixed anchor (2026-11-01 00:00 UTC), not from now(), for the same reason.
--
-- 3 tenants, 300 customers, 1500 orders. SSNs have valid-looking areas (001-899, never 666);
-- card numbers are 16 digits with a correct Luhn check digit. All people are fictional.

BEGIN;

-- A deterministic number in [0, 2^28) derived from a seed string.
CREATE FUNCTION pg_temp.h(seed text) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT ('x' || left(md5(seed), 7))::bit(28)::int $$;

-- `n` deterministic decimal digits derived from a seed string (n <= 32).
CREATE FUNCTION pg_temp.digits(seed text, n int) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT left(translate(md5(seed), 'abcdef', '314159'), n) $$;

-- The Luhn check digit for a string of digits (the payload, without its check digit).
CREATE FUNCTION pg_temp.luhn_check_digit(payload text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$
        SELECT ((10 - sum(CASE WHEN i % 2 = 1
                               THEN d * 2 - CASE WHEN d * 2 > 9 THEN 9 ELSE 0 END
                               ELSE d END) % 10) % 10)::text
        FROM (SELECT i, substr(payload, length(payload) + 1 - i, 1)::int AS d
              FROM generate_series(1, length(payload)) AS i) AS digits
    $$;

INSERT INTO tenants (id, name) VALUES
    (1, 'acme'),
    (2, 'globex'),
    (3, 'initech');

INSERT INTO customers (id, tenant_id, name, email, ssn, card_number, birth_date, created_at)
SELECT g,
       tenant_id,
       first_name || ' ' || last_name,
       -- emails are ASCII: ü -> ue, apostrophes dropped
       regexp_replace(replace(lower(first_name), 'ü', 'ue'), '[^a-z]', '', 'g') || '.'
           || regexp_replace(replace(lower(last_name), 'ü', 'ue'), '[^a-z]', '', 'g') || '@' || domain,
       lpad(area::text, 3, '0') || '-' || lpad(grp::text, 2, '0') || '-' || lpad(serial::text, 4, '0'),
       card_payload || pg_temp.luhn_check_digit(card_payload),
       date '1950-01-01' + pg_temp.h('birth' || g) % (date '2004-12-31' - date '1950-01-01' + 1),
       timestamptz '2026-11-01 00:00:00+00'
           - make_interval(secs => pg_temp.h('since' || g) % (3 * 365 * 86400))
FROM (
    SELECT g,
           -- 45% acme, 35% globex, 20% initech
           CASE WHEN pg_temp.h('tenant' || g) % 100 < 45 THEN 1
                WHEN pg_temp.h('tenant' || g) % 100 < 80 THEN 2
                ELSE 3 END AS tenant_id,
           -- 37 and 23 are coprime to 60 and the (g / 60) term shifts each round of 60, so the
           -- 300 (first, last) pairs, and hence names and emails, are all distinct.
           (ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael', 'Linda',
                  'David', 'Elizabeth', 'William', 'Barbara', 'Richard', 'Susan', 'Joseph',
                  'Jessica', 'Thomas', 'Sarah', 'Charles', 'Karen', 'Christopher', 'Lisa',
                  'Daniel', 'Nancy', 'Matthew', 'Sandra', 'Anthony', 'Ashley', 'Mark', 'Emily',
                  'Carlos', 'Sofia', 'Wei', 'Mei', 'Arjun', 'Priya', 'Kenji', 'Yuki', 'Omar',
                  'Fatima', 'Lukas', 'Anna', 'Mateo', 'Lucia', 'Noah', 'Olivia', 'Liam', 'Emma',
                  'Ethan', 'Ava', 'Diego', 'Camila', 'Hugo', 'Chloe', 'Ivan', 'Elena', 'Kwame',
                  'Amara', 'Sean', 'Grace'])[1 + (g * 37) % 60] AS first_name,
           (ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis',
                  'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson', 'Anderson',
                  'Thomas', 'Taylor', 'Moore', 'Jackson', 'Martin', 'Lee', 'Perez', 'Thompson',
                  'White', 'Harris', 'Sanchez', 'Clark', 'Ramirez', 'Lewis', 'Robinson', 'Walker',
                  'Young', 'Allen', 'King', 'Wright', 'Scott', 'Torres', 'Nguyen', 'Hill',
                  'Flores', 'Green', 'Adams', 'Nelson', 'Baker', 'Hall', 'Rivera', 'Campbell',
                  'Mitchell', 'Carter', 'Roberts', 'Chen', 'Patel', 'Kim', 'Tanaka', 'Müller',
                  'Schmidt', 'O''Brien', 'Novak', 'Okafor', 'Dubois'])[1 + (g * 23 + (g / 60) * 7) % 60]
               AS last_name,
           (ARRAY['gmail.com', 'gmail.com', 'gmail.com', 'yahoo.com', 'outlook.com',
                  'hotmail.com', 'icloud.com', 'proton.me', 'aol.com', 'fastmail.com',
                  'contoso.example', 'fabrikam.example', 'northwind.example',
                  'example.com'])[1 + pg_temp.h('mail' || g) % 14] AS domain,
           -- area 001-899 without 666, group 01-99, serial 0001-9999
           CASE WHEN 1 + pg_temp.h('area' || g) % 899 = 666 THEN 667
                ELSE 1 + pg_temp.h('area' || g) % 899 END AS area,
           1 + pg_temp.h('group' || g) % 99 AS grp,
           1 + pg_temp.h('serial' || g) % 9999 AS serial,
           -- 15-digit payload: Visa (4), Mastercard (51-55) or Discover (6011) prefix
           CASE pg_temp.h('brand' || g) % 10
                WHEN 0 THEN '6011' || pg_temp.digits('card' || g, 11)
                WHEN 1 THEN '5' || (1 + pg_temp.h('mc' || g) % 5)::text || pg_temp.digits('card' || g, 13)
                WHEN 2 THEN '5' || (1 + pg_temp.h('mc' || g) % 5)::text || pg_temp.digits('card' || g, 13)
                WHEN 3 THEN '5' || (1 + pg_temp.h('mc' || g) % 5)::text || pg_temp.digits('card' || g, 13)
                ELSE '4' || pg_temp.digits('card' || g, 14) END AS card_payload
    FROM generate_series(1, 300) AS g
) AS people;

-- Explicit ids were inserted; move the sequence past them (PERFORM: no result to print).
DO $$ BEGIN PERFORM setval(pg_get_serial_sequence('customers', 'id'), max(id)) FROM customers; END $$;

INSERT INTO orders (id, tenant_id, customer_id, total, status, created_at)
SELECT o.o,
       c.tenant_id,
       c.id,
       -- mostly 5-205, one order in ten up to five times that; prices often end in .99
       CASE WHEN pg_temp.h('cents' || o.o) % 3 = 0 THEN round(amount, 2) ELSE ceil(amount) - 0.01 END,
       CASE WHEN placed > timestamptz '2026-10-25 00:00:00+00' AND s < 50 THEN 'pending'
            WHEN placed > timestamptz '2026-10-25 00:00:00+00' THEN 'paid'
            WHEN s < 3 THEN 'pending'
            WHEN s < 12 THEN 'paid'
            WHEN s < 84 THEN 'shipped'
            WHEN s < 94 THEN 'cancelled'
            ELSE 'refunded' END,
       placed
FROM (SELECT o, 1 + pg_temp.h('buyer' || o) % 300 AS customer_id, pg_temp.h('status' || o) % 100 AS s
      FROM generate_series(1, 1500) AS o) AS o
JOIN customers AS c ON c.id = o.customer_id
CROSS JOIN LATERAL (
    -- the amount, and some time between the customer's sign-up and the anchor
    SELECT (5 + pg_temp.h('total' || o.o) % 20000 / 100.0)
               * CASE WHEN pg_temp.h('big' || o.o) % 10 = 0 THEN 1 + pg_temp.h('mult' || o.o) % 5 ELSE 1 END
           AS amount,
           c.created_at + make_interval(secs => pg_temp.h('placed' || o.o)
               % greatest(1, extract(epoch FROM timestamptz '2026-11-01 00:00:00+00' - c.created_at)::int))
           AS placed
) AS p
ORDER BY o.o;

DO $$ BEGIN PERFORM setval(pg_get_serial_sequence('orders', 'id'), max(id)) FROM orders; END $$;

COMMIT;

ANALYZE;
