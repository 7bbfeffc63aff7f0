//! `Engine::decide` with the quickstart's policy directory: decision plus rewrite by
//! relation substitution for typical OLTP statements of `support_acme` (row filter and
//! masks on customers and orders) and of `admin` (everything open), on a cache hit
//! (the same text again), on a miss (a text the engine has not seen: a new comment
//! each time, so parse, classification, grants check, rewrite and both round trips
//! run; the identity's grants and views are warm, as in a running proxy), on a miss
//! of a text in the form the proxy prints it (`miss_plain`: `select_customer` with a new
//! table alias each time, so no comment and no cache helps, as for an ORM's or a
//! driver's new statement), and on a cold identity (a fresh engine: casbin evaluated,
//! views built).
//!
//! ```text
//! cargo bench -p portcullis-policy --bench enforce -- --quick
//! ```
//!
//! The budget (DESIGN.md, issue 3): at most 2 µs on a hit, at most 30 µs on a miss.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_policy::governance::Governance;
use portcullis_policy::{Catalog, Decision, Engine, Identity, Policy, PolicyConfig};

/// The proxy's allocator (see `proxy/src/main.rs`), so that the figures are the proxy's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STATEMENTS: &[(&str, &str)] = &[
    (
        "select_customer",
        "SELECT id, name, email, ssn, card_number FROM customers WHERE id = $1",
    ),
    (
        "select_join",
        "SELECT c.name, o.total, o.status FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1",
    ),
    (
        "update_order",
        "UPDATE orders SET status = $1 WHERE id = $2",
    ),
    (
        "insert_order",
        "INSERT INTO orders (tenant_id, customer_id, total, status) VALUES ($1, $2, $3, $4)",
    ),
];

fn catalog() -> Arc<Catalog> {
    Arc::new(fixtures::quickstart_catalog())
}

fn policy() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let governance = Governance::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config: PolicyConfig = toml::from_str(
        "[roles.support]\nallow = [\"read\", \"write\", \"transaction\"]\n[roles.dba]\nallow = [\"all\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Policy::compile_governed(&config, governance).unwrap_or_else(|e| panic!("{e}"))
}

fn bench(c: &mut Criterion) {
    let (policy, catalog) = (policy(), catalog());
    let mut support = Identity::new("support_acme", ["support"]);
    support.attributes.insert("tenant".into(), "1".into());
    let admin = Identity::new("admin", ["dba"]);
    for (who, identity) in [("support", &support), ("admin", &admin)] {
        for (name, sql) in STATEMENTS {
            let engine = Engine::default();
            let decision = engine.decide(&policy, &catalog, identity, sql);
            assert!(
                matches!(decision, Decision::Allow { .. }),
                "{who} {name}: {decision:?}"
            );
            c.bench_function(&format!("enforce/{who}/{name}/hit"), |b| {
                b.iter(|| black_box(engine.decide(&policy, &catalog, identity, black_box(sql))))
            });
            let mut n = 0u64;
            c.bench_function(&format!("enforce/{who}/{name}/miss"), |b| {
                b.iter_batched(
                    || {
                        n += 1;
                        format!("{sql} -- {n}")
                    },
                    |text| black_box(engine.decide(&policy, &catalog, identity, &text)),
                    BatchSize::SmallInput,
                )
            });
            if *name == "select_customer" {
                let mut n = 0u64;
                c.bench_function(&format!("enforce/{who}/{name}/miss_plain"), |b| {
                    b.iter_batched(
                        || {
                            n += 1;
                            format!(
                                "SELECT c{n}.id, c{n}.name, c{n}.email, c{n}.ssn, c{n}.card_number FROM customers AS c{n} WHERE c{n}.id = $1"
                            )
                        },
                        |text| black_box(engine.decide(&policy, &catalog, identity, &text)),
                        BatchSize::SmallInput,
                    )
                });
            }
            c.bench_function(&format!("enforce/{who}/{name}/cold"), |b| {
                b.iter_batched(
                    Engine::default,
                    |engine| black_box(engine.decide(&policy, &catalog, identity, black_box(sql))),
                    BatchSize::SmallInput,
                )
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
