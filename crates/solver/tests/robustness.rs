//! Arbitrary values (huge, zero, empty) never make the snapshot constructor or the solver
//! panic: they are refused with an error or solved.

use std::collections::BTreeMap;

use proptest::prelude::*;
use skyloom_solver::{Cloud, Service, Snapshot, SolveOptions, solve};

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        any::<u64>(),
        0u64..10_000
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(0u32),
        1 => Just(u32::MAX),
        1 => Just(1_000_000u32),
        1 => Just(1_000_001u32),
        12 => 0u32..20,
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just(String::new()), 20 => "[a-c]{1,2}", 1 => Just("nvidia.com/gpu".to_owned())]
}

fn prices() -> impl Strategy<Value = BTreeMap<String, u64>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("cpu".to_owned()),
            Just("nvidia.com/gpu".to_owned()),
            name()
        ],
        prop_oneof![4 => 0u64..=999_999_999_999, 1 => amount()],
        0..3,
    )
}

fn resources() -> impl Strategy<Value = BTreeMap<String, u64>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("cpu".to_owned()),
            Just("memory".to_owned()),
            Just("nvidia.com/gpu".to_owned()),
            name()
        ],
        amount(),
        0..4,
    )
}

fn cloud() -> impl Strategy<Value = Cloud> {
    (
        name(),
        resources(),
        prices(),
        prop_oneof![8 => 0u32..1000, 1 => any::<u32>()],
        prop::option::of(resources()),
        any::<bool>(),
    )
        .prop_map(|(name, capacity, prices, score, node, cordoned)| {
            let mut cloud = Cloud::new(name);
            cloud.capacity = capacity;
            cloud.prices = prices;
            cloud.performance_score = score;
            cloud.largest_node = node;
            cloud.cordoned = cordoned;
            cloud
        })
}

fn service() -> impl Strategy<Value = Service> {
    (
        (
            name(),
            name(),
            resources(),
            count(),
            prop::option::of(count()),
        ),
        (
            any::<i32>(),
            count(),
            prop::option::of(count()),
            any::<bool>(),
        ),
        (
            count(),
            count(),
            count(),
            prop::collection::btree_map(name(), count(), 0..3),
        ),
    )
        .prop_map(
            |(
                (namespace, name, demand, desired, min),
                (priority, min_clouds, max_per_cloud, survive),
                (cost_weight, performance_weight, savings, current),
            )| {
                let mut service = Service::new(namespace, name, desired);
                service.demand = demand;
                service.min_replicas = min;
                service.priority = priority;
                service.placement.spread.min_clouds = min_clouds;
                service.placement.spread.max_replicas_per_cloud = max_per_cloud;
                service.placement.spread.survive_cloud_loss = survive;
                service.placement.objective.cost_weight = cost_weight;
                service.placement.objective.performance_weight = performance_weight;
                service.min_savings_percent = savings;
                service.current = current;
                service
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_values_never_panic(
        clouds in prop::collection::vec(cloud(), 0..4),
        services in prop::collection::vec(service(), 0..4),
    ) {
        let result = Snapshot::new(clouds, services);
        if let Ok(snapshot) = result {
            let options = SolveOptions {
                time_limit: std::time::Duration::from_secs(20),
                ..SolveOptions::default()
            };
            // Either a plan or a clean error; never a panic.
            let _ = solve(&snapshot, &options);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<Snapshot>(&text);
    }
}
