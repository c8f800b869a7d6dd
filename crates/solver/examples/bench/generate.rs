//! Seeded benchmark instances: clouds in several providers and regions with CPU, memory and
//! GPU capacity, and a mix of GPU and CPU services, some with residency and spread rules.

use std::collections::BTreeMap;

use skyloom_solver::selector::{LabelSelector, Requirement, SelectorOperator};
use skyloom_solver::{Cloud, Service, Snapshot};

/// A small, fast, seedable generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const GIB: u64 = 1 << 30;

const REGIONS: [(&str, &[(&str, &str)]); 4] = [
    (
        "aws",
        &[
            ("us-east-1", "us"),
            ("us-west-2", "us"),
            ("eu-west-1", "eu"),
            ("ap-northeast-1", "asia"),
        ],
    ),
    (
        "gcp",
        &[
            ("us-central1", "us"),
            ("europe-west4", "eu"),
            ("asia-east1", "asia"),
        ],
    ),
    (
        "azure",
        &[
            ("eastus", "us"),
            ("westeurope", "eu"),
            ("japaneast", "asia"),
        ],
    ),
    ("onprem", &[("dc-frankfurt", "eu"), ("dc-virginia", "us")]),
];

/// Generates `services` services over `clouds` clouds. Capacity is each cloud's share of the
/// total demand, spread unevenly so that cheap clouds fill up; `tight` makes GPUs short
/// overall (95 % of demand) and CPU and memory scarcer, so that replicas go unplaced.
pub fn instance(services: usize, clouds: usize, seed: u64, tight: bool) -> Snapshot {
    let mut rng = Rng::new(seed ^ (services as u64) << 32 ^ clouds as u64);
    let mut cloud_list = Vec::with_capacity(clouds);
    for index in 0..clouds {
        let (provider, regions) = REGIONS[index % REGIONS.len()];
        let (region, jurisdiction) = regions[(index / REGIONS.len()) % regions.len()];
        let mut cloud = Cloud::new(format!("{provider}-{region}-{index:02}"));
        cloud.provider = provider.to_owned();
        cloud.region = region.to_owned();
        cloud
            .labels
            .insert("jurisdiction".to_owned(), jurisdiction.to_owned());
        let factor = match provider {
            "aws" => 1.0,
            "gcp" => 0.95,
            "azure" => 1.05,
            _ => 0.7,
        } * (0.8 + rng.range(0, 40) as f64 / 100.0);
        let has_gpu = index % 5 != 4;
        cloud
            .prices
            .insert("cpu".to_owned(), (40_000.0 * factor) as u64);
        cloud
            .prices
            .insert("memory".to_owned(), (5_000.0 * factor) as u64);
        if has_gpu {
            let gpu_factor = 0.7 + rng.range(0, 60) as f64 / 100.0;
            cloud.prices.insert(
                "nvidia.com/gpu".to_owned(),
                (2_500_000.0 * factor * gpu_factor) as u64,
            );
        }
        let node_gpus = if has_gpu {
            *rng.pick(&[1u64, 4, 8, 8])
        } else {
            0
        };
        cloud.largest_node = Some(BTreeMap::from([
            ("cpu".to_owned(), rng.range(32, 96) * 1000),
            ("memory".to_owned(), rng.range(128, 768) * GIB),
            ("nvidia.com/gpu".to_owned(), node_gpus),
        ]));
        cloud_list.push((cloud, has_gpu, rng.range(50, 150)));
    }
    let mut service_list = Vec::with_capacity(services);
    let mut total = BTreeMap::<&str, u64>::new();
    for index in 0..services {
        let gpu = rng.chance(30);
        let mut service = Service::new(
            format!("team-{}", index % 17),
            format!("{}-{index:04}", if gpu { "llm" } else { "api" }),
            0,
        );
        let desired = if gpu {
            let gpus = *rng.pick(&[1u64, 1, 1, 1, 2, 2, 4, 8]);
            service.demand.insert("nvidia.com/gpu".to_owned(), gpus);
            service
                .demand
                .insert("cpu".to_owned(), rng.range(4, 16) * 1000);
            service
                .demand
                .insert("memory".to_owned(), rng.range(16, 128) * GIB);
            rng.range(1, 6) as u32
        } else {
            service
                .demand
                .insert("cpu".to_owned(), rng.range(1, 32) * 250);
            service
                .demand
                .insert("memory".to_owned(), rng.range(1, 64) * GIB / 2);
            rng.range(1, 12) as u32
        };
        service.desired = desired;
        service.priority = *rng.pick(&[0, 0, 0, 0, 0, 0, 0, 10, 10, 100]);
        if rng.chance(20) {
            let zone = *rng.pick(&["eu", "us"]);
            service.placement.cloud_selector = Some(LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![Requirement {
                    key: "jurisdiction".to_owned(),
                    operator: SelectorOperator::In,
                    values: vec![zone.to_owned()],
                }],
            });
        }
        if rng.chance(20) && desired > 1 {
            service.placement.spread.max_replicas_per_cloud = Some(desired.div_ceil(2));
        }
        if rng.chance(10) && desired > 1 {
            service.placement.spread.min_clouds = 2;
        }
        if rng.chance(5) && desired > 1 {
            service.placement.spread.survive_cloud_loss = true;
            service.min_replicas = Some(desired / 2);
        }
        for (resource, amount) in &service.demand {
            let key: &str = match resource.as_str() {
                "cpu" => "cpu",
                "memory" => "memory",
                _ => "nvidia.com/gpu",
            };
            *total.entry(key).or_default() += amount * u64::from(desired);
        }
        service_list.push(service);
    }
    // Capacity: each cloud's share of the total demand, GPUs slightly short overall and CPU
    // with some slack, unevenly spread so that cheap clouds fill up.
    let weight_all: u64 = cloud_list.iter().map(|c| c.2).sum();
    let gpu_weight: u64 = cloud_list.iter().filter(|c| c.1).map(|c| c.2).sum();
    for (cloud, has_gpu, weight) in &mut cloud_list {
        let share = |amount: u64, of: u64, ratio: f64| -> u64 {
            ((amount as f64) * (*weight as f64) / (of.max(1) as f64) * ratio) as u64
        };
        let (cpu_ratio, memory_ratio, gpu_ratio) = if tight {
            (1.25, 1.4, 0.95)
        } else {
            (1.6, 1.8, 1.3)
        };
        let cpu = share(
            total.get("cpu").copied().unwrap_or(0),
            weight_all,
            cpu_ratio,
        );
        let memory = share(
            total.get("memory").copied().unwrap_or(0),
            weight_all,
            memory_ratio,
        );
        cloud.capacity.insert("cpu".to_owned(), cpu.max(8000));
        cloud
            .capacity
            .insert("memory".to_owned(), memory.max(32 * GIB));
        if *has_gpu {
            let gpus = share(
                total.get("nvidia.com/gpu").copied().unwrap_or(0),
                gpu_weight,
                gpu_ratio,
            );
            cloud
                .capacity
                .insert("nvidia.com/gpu".to_owned(), gpus.max(1));
        }
    }
    let clouds: Vec<Cloud> = cloud_list.into_iter().map(|c| c.0).collect();
    match Snapshot::new(clouds, service_list) {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("generated an invalid snapshot: {error}"),
    }
}
