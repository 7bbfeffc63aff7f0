//! `Engine::check` on typical OLTP statements (pgbench's TPC-B-like script, simple
//! protocol, so literals are inlined): on an exact-text cache hit, on a shape cache hit
//! (same statement, new literals), on a miss (a fresh engine every time), on the second
//! text of a shape (which proves its template), and on a miss for a text without a shape.
//!
//! ```text
//! cargo bench -p portcullis-policy --bench check -- --quick
//! ```
//!
//! The budget (DESIGN.md): a cached statement in at most 2 µs, a miss in at most 30 µs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_policy::{Engine, Identity, Policy, PolicyConfig};

/// The proxy's allocator (see `proxy/src/main.rs`), so that the figures are the proxy's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The TPC-B-like statements as `pgbench -M simple` sends them, literals in `{}`.
const STATEMENTS: &[(&str, &str)] = &[
    (
        "select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
    ),
    (
        "update",
        "UPDATE pgbench_accounts SET abalance = abalance + -{} WHERE aid = {};",
    ),
    (
        "insert",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {}, {}, CURRENT_TIMESTAMP);",
    ),
];

fn policy() -> Policy {
    let config: PolicyConfig = match toml::from_str(
        r#"
        [roles.app]
        allow = ["read", "write", "transaction"]
        "#,
    ) {
        Ok(config) => config,
        Err(error) => panic!("bench policy: {error}"),
    };
    match Policy::compile(&config) {
        Ok(policy) => policy,
        Err(error) => panic!("bench policy: {error}"),
    }
}

/// `template` with each `{}` replaced by a number derived from `seed`.
fn instance(template: &str, seed: u64) -> String {
    let mut text = String::with_capacity(template.len() + 16);
    let mut value = seed;
    let mut parts = template.split("{}");
    if let Some(first) = parts.next() {
        text.push_str(first);
    }
    for part in parts {
        value = value
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        text.push_str(&(1 + (value >> 33) % 100_000).to_string());
        text.push_str(part);
    }
    text
}

fn check(c: &mut Criterion) {
    let policy = policy();
    let app = Identity::new("app", ["app"]);
    let mut group = c.benchmark_group("check");
    for (name, template) in STATEMENTS {
        // Exact-text hit: the same text again.
        let engine = Engine::default();
        let text = instance(template, 1);
        let _ = engine.check(&policy, &app, &text);
        group.bench_function(format!("{name}/exact_hit"), |b| {
            b.iter(|| engine.check(&policy, &app, black_box(&text)));
        });

        // Shape hit: a text the exact-text cache has not seen, of a shape whose template
        // is proven (by its first two texts). The texts are made outside the timed part.
        let engine = Engine::default();
        let _ = engine.check(&policy, &app, &instance(template, 0));
        let _ = engine.check(&policy, &app, &instance(template, 1));
        let mut seed = 1_000;
        group.bench_function(format!("{name}/shape_hit"), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    instance(template, seed)
                },
                |text| engine.check(&policy, &app, black_box(&text)),
                BatchSize::SmallInput,
            );
        });

        // Miss: a fresh engine, so the text is parsed, classified, re-serialized and
        // verified, and remembered as its shape's first sighting.
        group.bench_function(format!("{name}/miss"), |b| {
            b.iter_batched(
                || (Engine::new(16), instance(template, 7)),
                |(engine, text)| engine.check(&policy, &app, black_box(&text)),
                BatchSize::SmallInput,
            );
        });

        // Learning: the second text of a shape, for which the shape's key is analysed
        // (instead of the text) to prove the template that then decides the text.
        group.bench_function(format!("{name}/learn"), |b| {
            b.iter_batched(
                || {
                    let engine = Engine::new(16);
                    let _ = engine.check(&policy, &app, &instance(template, 7));
                    (engine, instance(template, 8))
                },
                |(engine, text)| engine.check(&policy, &app, black_box(&text)),
                BatchSize::SmallInput,
            );
        });

        // Miss without a shape: the cost before the shape cache existed. A comment makes
        // the text shapeless.
        let shapeless = format!("{} -- x", instance(template, 7));
        group.bench_function(format!("{name}/miss_no_shape"), |b| {
            b.iter_batched(
                || Engine::new(16),
                |engine| engine.check(&policy, &app, black_box(&shapeless)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = check
}
criterion_main!(benches);
