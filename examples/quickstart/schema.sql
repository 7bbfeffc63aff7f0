-- Portcullis quickstart: a small multi-tenant shop.
-- Load into an empty database:
--   psql -v ON_ERROR_STOP=1 -d quickstart -f schema.sql -f data.sql
-- Columns holding personal data are marked with COMMENT ON COLUMN ('classified: ...'),
-- which is what the quickstart policy masks or hides.

CREATE TABLE tenants (
    id   int  PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE customers (
    id          bigserial   PRIMARY KEY,
    tenant_id   int         NOT NULL REFERENCES tenants,
    name        text        NOT NULL,
    email       text        NOT NULL,
    ssn         text        NOT NULL,  -- 'NNN-NN-NNNN'
    card_number text        NOT NULL,  -- 16 digits, Luhn-valid
    birth_date  date        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          bigserial     PRIMARY KEY,
    tenant_id   int           NOT NULL REFERENCES tenants,
    customer_id bigint        NOT NULL REFERENCES customers,
    total       numeric(12,2) NOT NULL,
    status      text          NOT NULL
        CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled', 'refunded')),
    created_at  timestamptz   NOT NULL DEFAULT now()
);

CREATE INDEX customers_tenant_id_idx ON customers (tenant_id);
CREATE INDEX orders_tenant_id_idx    ON orders (tenant_id);
CREATE INDEX orders_customer_id_idx  ON orders (customer_id);

COMMENT ON TABLE tenants   IS 'Companies using the shop; tenant_id on every other table refers here.';
COMMENT ON TABLE customers IS 'End customers of a tenant; holds personal data.';
COMMENT ON TABLE orders    IS 'Orders placed by customers.';

COMMENT ON COLUMN customers.tenant_id   IS 'tenant key: row-level security by tenant';
COMMENT ON COLUMN customers.name        IS 'classified: pii (full name)';
COMMENT ON COLUMN customers.email       IS 'classified: pii (email address)';
COMMENT ON COLUMN customers.ssn         IS 'classified: secret (US Social Security number, NNN-NN-NNNN)';
COMMENT ON COLUMN customers.card_number IS 'classified: pci (primary account number, 16 digits, Luhn-valid)';
COMMENT ON COLUMN customers.birth_date  IS 'classified: pii (date of birth)';
COMMENT ON COLUMN orders.tenant_id      IS 'tenant key: row-level security by tenant';
