-- Portcullis second example: a multi-tenant HR SaaS.
-- Load into an empty database:
--   psql -v ON_ERROR_STOP=1 -d saas -f schema.sql -f data.sql
-- Every table carries company_id (the tenant key); the policy directory beside this
-- file decides which companies, departments and column values each role sees.

CREATE TABLE companies (
    id   int  PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE departments (
    id         int  PRIMARY KEY,
    company_id int  NOT NULL REFERENCES companies,
    name       text NOT NULL,
    UNIQUE (company_id, name),
    -- Lets employees reference (company_id, department_id) together.
    UNIQUE (company_id, id)
);

CREATE TABLE employees (
    id             int           PRIMARY KEY,
    company_id     int           NOT NULL REFERENCES companies,
    department_id  int           NOT NULL,
    full_name      text          NOT NULL,
    work_email     text          NOT NULL UNIQUE,
    personal_email text,
    phone          text,
    national_id    text          NOT NULL,  -- 'NNN-NN-NNNN'
    salary         numeric(12,2) NOT NULL CHECK (salary > 0),
    bank_account   text          NOT NULL,  -- IBAN-like
    hire_date      date          NOT NULL,
    birth_date     date          NOT NULL,
    -- An employee's department belongs to the employee's company.
    FOREIGN KEY (company_id, department_id) REFERENCES departments (company_id, id),
    UNIQUE (company_id, id)
);

CREATE TABLE payroll (
    id          int           PRIMARY KEY,
    company_id  int           NOT NULL REFERENCES companies,
    employee_id int           NOT NULL,
    period      date          NOT NULL CHECK (period = date_trunc('month', period)),
    gross       numeric(12,2) NOT NULL,
    net         numeric(12,2) NOT NULL CHECK (net <= gross),
    FOREIGN KEY (company_id, employee_id) REFERENCES employees (company_id, id),
    UNIQUE (employee_id, period)
);

CREATE INDEX departments_company_id_idx ON departments (company_id);
CREATE INDEX employees_company_department_idx ON employees (company_id, department_id);
CREATE INDEX payroll_company_period_idx ON payroll (company_id, period);

COMMENT ON TABLE companies   IS 'Customers of the HR SaaS (tenants); company_id on every other table refers here.';
COMMENT ON TABLE departments IS 'Departments of a company.';
COMMENT ON TABLE employees   IS 'Employees of a company; holds personal and financial data.';
COMMENT ON TABLE payroll     IS 'Monthly pay per employee (period = first day of the month).';

COMMENT ON COLUMN employees.full_name      IS 'classified: pii (full name)';
COMMENT ON COLUMN employees.work_email     IS 'classified: pii (work email)';
COMMENT ON COLUMN employees.personal_email IS 'classified: pii (personal email)';
COMMENT ON COLUMN employees.phone          IS 'classified: pii (phone number)';
COMMENT ON COLUMN employees.national_id    IS 'classified: secret (national identification number)';
COMMENT ON COLUMN employees.salary         IS 'classified: financial (yearly base salary)';
COMMENT ON COLUMN employees.bank_account   IS 'classified: financial (bank account, IBAN-like)';
COMMENT ON COLUMN employees.birth_date     IS 'classified: pii (date of birth)';
COMMENT ON COLUMN payroll.gross            IS 'classified: financial (monthly gross pay)';
COMMENT ON COLUMN payroll.net              IS 'classified: financial (monthly net pay)';
