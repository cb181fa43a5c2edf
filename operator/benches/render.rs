//! Render time of a large ScaledApp (8 shards, 4 worker pools): validate + render + the JSON
//! the applier hashes. Run with `cargo bench -p scaledapp-operator --bench render`.

use criterion::{Criterion, criterion_group, criterion_main};
use scaledapp_operator::crd::{ScaledApp, WorkerPoolSpec};
use scaledapp_operator::render::render;
use scaledapp_operator::validate::{Defaults, validate};
use std::hint::black_box;

fn large_app() -> ScaledApp {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop.yaml");
    let text = std::fs::read_to_string(path).expect("examples/shop.yaml exists");
    let mut app: ScaledApp = serde_yaml::from_str(&text).expect("example parses");
    app.metadata.namespace = Some("bench".into());
    app.metadata.uid = Some("bench-uid".into());
    app.spec.database.shards = 8;
    app.spec.app.replicas.max = 20;
    let template = app.spec.workers[0].clone();
    app.spec.workers = (0..4)
        .map(|index| WorkerPoolSpec {
            name: format!("pool-{index}"),
            ..template.clone()
        })
        .collect();
    app
}

fn bench(criterion: &mut Criterion) {
    let app = large_app();
    criterion.bench_function("validate+render 8 shards 4 pools", |bencher| {
        bencher.iter(|| {
            let validated = validate(black_box(&app), &Defaults::default()).expect("valid");
            black_box(render(&validated))
        })
    });
    criterion.bench_function("validate+render+serialise 8 shards 4 pools", |bencher| {
        bencher.iter(|| {
            let validated = validate(black_box(&app), &Defaults::default()).expect("valid");
            black_box(render(&validated).manifests())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
