-- Portcullis second example: deterministic demo data (load after schema.sql, into an
-- empty database).
--   psql -v ON_ERROR_STOP=1 -d saas -f schema.sql -f data.sql
--
-- Nothing here calls random(): every "random" choice is a hash of a label and a row
-- number (pg_temp.h below), so every load produces byte-identical rows.
--
-- 3 companies, 6 departments each (ids: company 1 = 1..6, company 2 = 7..12,
-- company 3 = 13..18; Engineering is 1, 7 and 13), 250 employees (employee i belongs
-- to company ((i - 1) % 3) + 1), and payroll for August, September and October 2026
-- (750 rows). Full names are unique. All people are fictional.

BEGIN;

-- A deterministic number in [0, 2^28) derived from a seed string.
CREATE FUNCTION pg_temp.h(seed text) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT ('x' || left(md5(seed), 7))::bit(28)::int $$;

-- `n` deterministic decimal digits derived from a seed string (n <= 32).
CREATE FUNCTION pg_temp.digits(seed text, n int) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT left(translate(md5(seed), 'abcdef', '314159'), n) $$;

INSERT INTO companies (id, name) VALUES
    (1, 'Acme Corp'),
    (2, 'Globex Corporation'),
    (3, 'Initech');

INSERT INTO departments (id, company_id, name)
SELECT (c - 1) * 6 + k, c,
       (ARRAY['Engineering', 'Sales', 'Marketing', 'Finance', 'Human Resources',
              'Customer Support'])[k]
FROM generate_series(1, 3) AS c, generate_series(1, 6) AS k;

INSERT INTO employees (id, company_id, department_id, full_name, work_email, personal_email,
                       phone, national_id, salary, bank_account, hire_date, birth_date)
SELECT i,
       company,
       (company - 1) * 6 + 1 + pg_temp.h('dept' || i) % 6,
       first || ' ' || last,
       lower(first || '.' || last) || '@' || domain,
       CASE WHEN i % 9 = 0 THEN NULL
            ELSE lower(left(first, 1) || last) || (pg_temp.h('mail' || i) % 90 + 10)::text
                 || (ARRAY['@gmail.example', '@proton.example', '@outlook.example'])[1 + i % 3]
       END,
       CASE WHEN i % 11 = 0 THEN NULL
            ELSE '+1-555-' || pg_temp.digits('phone' || i, 3) || '-' || pg_temp.digits('line' || i, 4)
       END,
       lpad((pg_temp.h('area' || i) % 899 + 1)::text, 3, '0') || '-'
           || lpad((pg_temp.h('group' || i) % 99 + 1)::text, 2, '0') || '-'
           || lpad((pg_temp.h('serial' || i) % 9999 + 1)::text, 4, '0'),
       (42000 + pg_temp.h('salary' || i) % 1200 * 100)::numeric
           + (pg_temp.h('cents' || i) % 100)::numeric / 100,
       'DE' || lpad((pg_temp.h('check' || i) % 97 + 2)::text, 2, '0')
           || pg_temp.digits('bank' || i, 18),
       date '2012-01-01' + pg_temp.h('hired' || i) % 5000,
       date '1962-01-01' + pg_temp.h('born' || i) % 13500
FROM (
    SELECT i,
           (i - 1) % 3 + 1 AS company,
           (ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael', 'Linda',
                  'David', 'Elizabeth', 'William', 'Barbara', 'Richard', 'Susan', 'Joseph',
                  'Jessica', 'Thomas', 'Sarah', 'Charles', 'Karen', 'Daniel', 'Lisa', 'Matthew',
                  'Nancy', 'Anthony', 'Betty', 'Mark', 'Sandra', 'Donald', 'Margaret', 'Steven',
                  'Ashley', 'Andrew', 'Kimberly', 'Paul', 'Emily', 'Joshua', 'Donna', 'Kenneth',
                  'Michelle', 'Kevin', 'Carol', 'Brian', 'Amanda', 'George', 'Melissa', 'Timothy',
                  'Deborah', 'Ronald', 'Stephanie'])[1 + (i - 1) % 50] AS first,
           (ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis',
                  'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson', 'Anderson',
                  'Thomas', 'Taylor', 'Moore', 'Jackson', 'Martin', 'Lee', 'Perez', 'Thompson',
                  'White', 'Harris', 'Sanchez', 'Clark', 'Ramirez', 'Lewis', 'Robinson', 'Walker',
                  'Young', 'Allen', 'King', 'Wright', 'Scott', 'Torres', 'Nguyen', 'Hill',
                  'Flores', 'Green', 'Adams', 'Nelson', 'Baker', 'Hall', 'Rivera', 'Campbell',
                  'Mitchell', 'Carter', 'Roberts'])[1 + ((i - 1) / 50 * 7 + (i - 1)) % 50] AS last,
           (ARRAY['acme.example', 'globex.example', 'initech.example'])[(i - 1) % 3 + 1] AS domain
    FROM generate_series(1, 250) AS i
) AS people;

-- Monthly pay: gross is a twelfth of the yearly salary, net 72% of gross.
INSERT INTO payroll (id, company_id, employee_id, period, gross, net)
SELECT (m - 1) * 250 + e.id,
       e.company_id,
       e.id,
       (date '2026-08-01' + make_interval(months => m - 1))::date,
       round(e.salary / 12, 2),
       round(round(e.salary / 12, 2) * 0.72, 2)
FROM employees AS e, generate_series(1, 3) AS m;

COMMIT;

ANALYZE;
