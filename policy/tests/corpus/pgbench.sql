-- Statements pgbench 15 sends: `-i` initialisation (client- and server-side data
-- generation), the built-in tpcb-like, simple-update and select-only scripts in
-- `-M simple` (values substituted) and `-M extended` / `-M prepared` ($n parameters).
-- Captured from the server log with log_statement = all.
-- Each entry starts with a `-- name:` line.

-- name: pgbench init drop
drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers

-- name: pgbench init create history
create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))

-- name: pgbench init create tellers
create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)

-- name: pgbench init create accounts
create table pgbench_accounts(aid    int not null,bid int,abalance int,filler char(84)) with (fillfactor=100)

-- name: pgbench init create branches
create table pgbench_branches(bid int not null,bbalance int,filler char(88)) with (fillfactor=100)

-- name: pgbench init begin
begin

-- name: pgbench init truncate
truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers

-- name: pgbench init insert branches
insert into pgbench_branches(bid,bbalance) values(1,0)

-- name: pgbench init insert tellers
insert into pgbench_tellers(tid,bid,tbalance) values (10,1,0)

-- name: pgbench init commit
commit

-- name: pgbench init server-side generate branches
insert into pgbench_branches(bid,bbalance) select bid, 0 from generate_series(1, 1) as bid

-- name: pgbench init server-side generate tellers
insert into pgbench_tellers(tid,bid,tbalance) select tid, (tid - 1) / 10 + 1, 0 from generate_series(1, 10) as tid

-- name: pgbench init server-side generate accounts
insert into pgbench_accounts(aid,bid,abalance,filler) select aid, (aid - 1) / 100000 + 1, 0, '' from generate_series(1, 100000) as aid

-- name: pgbench init vacuum
vacuum pgbench_branches

-- name: pgbench init primary key
alter table pgbench_branches add primary key (bid)

-- name: pgbench partition check
select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' and o.n is not null group by 1, 2 order by 1 asc limit 1

-- name: pgbench scale check
select count(*) from pgbench_branches

-- name: pgbench truncate history
truncate pgbench_history

-- name: pgbench simple BEGIN
BEGIN;

-- name: pgbench simple update accounts
UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;

-- name: pgbench simple select
SELECT abalance FROM pgbench_accounts WHERE aid = 1;

-- name: pgbench simple update tellers
UPDATE pgbench_tellers SET tbalance = tbalance + -3223 WHERE tid = 5;

-- name: pgbench simple update branches
UPDATE pgbench_branches SET bbalance = bbalance + 857 WHERE bid = 1;

-- name: pgbench simple insert history
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP);

-- name: pgbench simple END
END;

-- name: pgbench extended update accounts
UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;

-- name: pgbench extended select
SELECT abalance FROM pgbench_accounts WHERE aid = $1;

-- name: pgbench extended update tellers
UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;

-- name: pgbench extended update branches
UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;

-- name: pgbench extended insert history
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);
