//! Operator benchmark on the testbed: N AIServices over 5 members. Prints the time until every
//! member Deployment exists, the apply-to-created latency (p50/p99), the operator's RSS and idle
//! CPU, and its reconcile errors. The operator runs as its own process (the release binary).
//!
//! `scripts/bench-operator [N] [--rate R]` builds what it needs and runs this. Without
//! `--rate` the N AIServices are created as fast as the hub takes them (a burst); with it, R
//! per second (steady arrival), which is what the latency target is about.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: a failure ends the run

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use skyloom_api::AIService;
use skyloom_e2e::operator::{OPERATOR_NAMESPACE, pool_for, register_members};
use skyloom_testbed::{MemberSpec, NodeGroup, Testbed, TestbedSpec};

fn spec() -> TestbedSpec {
    let member = |name: &str, region: &str| MemberSpec {
        name: name.into(),
        region: Some(region.into()),
        zone: None,
        nodes: vec![NodeGroup {
            name: "n".into(),
            count: 4,
            cpu: "256".into(),
            memory: "1Ti".into(),
            gpu: 0,
            instance_type: None,
            labels: Default::default(),
        }],
    };
    TestbedSpec {
        name: "bench".into(),
        hub: true,
        members: vec![
            member("aws-us-east-1", "us-east-1"),
            member("aws-eu-west-1", "eu-west-1"),
            member("gcp-europe-west4", "europe-west4"),
            member("azure-eastus", "eastus"),
            member("azure-westeurope", "westeurope"),
        ],
    }
}

fn proc_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12) // utime + stime, fields 14 and 15 of the full line
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rate: Option<f64> = args
        .iter()
        .position(|a| a == "--rate")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .filter(|r: &f64| *r > 0.0);
    let skyloom = std::env::var("SKYLOOM_BIN").unwrap_or_else(|_| "target/release/skyloom".into());
    eprintln!("starting a hub and 5 members...");
    let tb = Testbed::start(spec()).await.unwrap();
    register_members(&tb, |m| pool_for(m, "2.00"))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(tb.work_dir().join("operator.log")).unwrap();
    let mut op = std::process::Command::new(&skyloom)
        .args([
            "run",
            "--leader-elect=false",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--control-plane-id",
            "bench",
        ])
        .arg("--kubeconfig")
        .arg(tb.hub().kubeconfig_path())
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{port}"))
        .env("SKYLOOM_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting the operator (build it with cargo build --release -p skyloom)");
    let pid = op.id();

    // Watch every member for Deployments and note when each first appears.
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    for m in tb.members() {
        let api: Api<Deployment> = Api::all(m.direct_client().await.unwrap());
        let seen = seen.clone();
        tokio::spawn(async move {
            let stream = kube::runtime::WatchStreamExt::default_backoff(watcher::watcher(
                api,
                watcher::Config::default().labels("app.kubernetes.io/managed-by=skyloom"),
            ));
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev {
                    let key = format!(
                        "{}/{}",
                        d.metadata.namespace.unwrap_or_default(),
                        d.metadata.name.unwrap_or_default()
                    );
                    seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let hub = tb.hub().client().await.unwrap();
    let namespaces = 10;
    for i in 0..namespaces {
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("bench-{i}")}}))
                .unwrap();
        Api::<k8s_openapi::api::core::v1::Namespace>::all(hub.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    eprintln!("creating {n} AIServices...");
    let busy_before = cpu_ticks(pid);
    let created: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let created_at: Arc<Mutex<BTreeMap<String, SystemTime>>> = Arc::default();
    let start = Instant::now();
    // Steady arrival: the i-th create starts at i / rate seconds.
    let pace = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let not_before = pace.map(|p| start + p * u32::try_from(i).unwrap());
            let hub = hub.clone();
            let created = created.clone();
            let created_at = created_at.clone();
            async move {
                if let Some(t) = not_before {
                    tokio::time::sleep_until(t.into()).await;
                }
                let ns = format!("bench-{}", i % namespaces);
                let name = format!("svc-{i}");
                let ais: AIService = serde_json::from_value(serde_json::json!({
                    "apiVersion": "skyloom.io/v1alpha1", "kind": "AIService",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "registry.example/m:1",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}},
                }))
                .unwrap();
                Api::<AIService>::namespaced(hub, &ns).create(&PostParams::default(), &ais).await.unwrap();
                created.lock().unwrap().insert(format!("{ns}/{name}"), Instant::now());
                created_at.lock().unwrap().insert(format!("{ns}/{name}"), SystemTime::now());
            }
        })
        .await;
    let applied = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if seen.lock().unwrap().len() >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    let busy_cpu_s = (cpu_ticks(pid) - busy_before) as f64 / 100.0;
    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().unwrap();
        created
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, c)| seen.get(k).map(|s| s.saturating_duration_since(*c)))
            .collect()
    };
    latencies.sort();
    let found = latencies.len();
    let peak_rss_mib = proc_field(pid, "VmHWM:") as f64 / 1024.0;

    let ticks_per_s = 100.0;
    let metric_sum = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Idle: the Deployments exist, but the members are still starting Pods and every status
    // change is a reconcile. Wait until no reconcile happened for 10 s (at most 5 minutes),
    // then measure CPU over 30 s.
    let settle_start = Instant::now();
    let mut last = metric_sum(&reqwest_less_get(port).await, "skyloom_reconciles_total");
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(10)
        && settle_start.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = metric_sum(&reqwest_less_get(port).await, "skyloom_reconciles_total");
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    eprintln!(
        "reconciles stopped {:.1} s after the last Deployment appeared",
        (settle_start.elapsed().saturating_sub(quiet_since.elapsed())).as_secs_f64()
    );
    let before_idle = reqwest_less_get(port).await;
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle_cpu = (cpu_ticks(pid) - t0) as f64 / ticks_per_s / 30.0 * 100.0;
    let rss_mib = proc_field(pid, "VmRSS:") as f64 / 1024.0;
    let metrics = reqwest_less_get(port).await;
    for name in [
        "skyloom_reconciles_total",
        "skyloom_solve_duration_seconds_count",
    ] {
        eprintln!(
            "during the 30 s idle window: {name} +{}",
            metric_sum(&metrics, name) - metric_sum(&before_idle, name)
        );
    }
    // Services not Ready are looked at again every 30 s; say how many and why.
    let mut readiness: BTreeMap<String, usize> = BTreeMap::new();
    for ais in Api::<AIService>::all(hub.clone())
        .list(&Default::default())
        .await
        .unwrap()
    {
        let ready = ais
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map_or("no Ready condition".to_owned(), |c| {
                format!("Ready={} {}", c.status, c.reason)
            });
        *readiness.entry(ready).or_default() += 1;
    }
    eprintln!("AIServices after the idle window: {readiness:?}");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("skyloom_reconcile_errors_total"))
    {
        eprintln!("{line}");
    }
    let metric = |name: &str| metric_sum(&metrics, name);
    // An empty sum of f64 is -0.0; print counts as integers.
    let errors = metric("skyloom_reconcile_errors_total") as u64;
    let solves = metric("skyloom_solve_duration_seconds_count");
    let solve_seconds = metric("skyloom_solve_duration_seconds_sum");
    let reconciles = metric("skyloom_reconciles_total");
    let _ = op.kill();
    let _ = op.wait();
    // The operator's warnings outlive the testbed's work directory; failed reconciles are
    // summarised by message (service names cut off).
    let kept = std::path::Path::new("target/bench-operator");
    let _ = std::fs::create_dir_all(kept);
    let _ = std::fs::copy(
        tb.work_dir().join("operator.log"),
        kept.join("operator.log"),
    );
    let log_text = std::fs::read_to_string(kept.join("operator.log")).unwrap_or_default();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for line in log_text.lines().filter(|l| l.contains("reconcile failed")) {
        let why = line.rsplit(": ").next().unwrap_or(line);
        *failures.entry(why.chars().take(120).collect()).or_default() += 1;
    }
    eprintln!(
        "failed reconciles by message (log in target/bench-operator/operator.log): {failures:?}"
    );
    eprintln!("hub API requests (verb resource/subresource: count):");
    for (k, v) in request_counts(&hub).await {
        eprintln!("  {k}: {v}");
    }
    let mut member_requests: BTreeMap<String, f64> = BTreeMap::new();
    for m in tb.members() {
        for (k, v) in request_counts(&m.direct_client().await.unwrap()).await {
            *member_requests.entry(k).or_default() += v;
        }
    }
    eprintln!("member API requests, all members:");
    for (k, v) in member_requests {
        eprintln!("  {k}: {v}");
    }

    eprintln!(
        "operator CPU while converging: {busy_cpu_s:.1} s over {:.1} s of wall time",
        total.as_secs_f64()
    );
    eprintln!(
        "solves: {solves} taking {solve_seconds:.2} s in all (mean {:.0} ms); reconciles: {reconciles}",
        if solves > 0.0 {
            solve_seconds / solves * 1000.0
        } else {
            0.0
        }
    );
    // Where the latency goes, from the members' audit logs: the create's answer to the
    // operator's first write of that Deployment arriving at the member (the hub's watch, the
    // operator's queue, solve and reconcile), then the member API server's handling of it.
    let created_at = created_at.lock().unwrap().clone();
    let mut first_write: BTreeMap<String, (SystemTime, SystemTime)> = BTreeMap::new();
    for m in tb.members() {
        for r in m.audit_requests().unwrap_or_default() {
            if r.resource() != "deployments"
                || !matches!(r.verb.as_str(), "create" | "patch")
                || !r.from_agent("skyloom/")
            {
                continue;
            }
            let key = format!("{}/{}", r.namespace(), r.name());
            let seen = (r.received(), r.completed());
            first_write
                .entry(key)
                .and_modify(|w| *w = (*w).min(seen))
                .or_insert(seen);
        }
    }
    let mut to_member = Vec::new();
    let mut in_member = Vec::new();
    for (key, (received, done)) in &first_write {
        if let Some(c) = created_at.get(key) {
            to_member.push(received.duration_since(*c).unwrap_or_default());
            in_member.push(done.duration_since(*received).unwrap_or_default());
        }
    }
    to_member.sort();
    in_member.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "latency parts over {} Deployments: create -> operator's write at the member p50 {:.0} ms, p99 {:.0} ms; the member API server's handling of that write p50 {:.0} ms, p99 {:.0} ms",
        to_member.len(),
        ms(percentile(&to_member, 0.5)),
        ms(percentile(&to_member, 0.99)),
        ms(percentile(&in_member, 0.5)),
        ms(percentile(&in_member, 0.99)),
    );
    let arrival = rate.map_or("burst".to_owned(), |r| format!("{r}/s"));
    println!(
        "| AIServices | arrival | members | created in | all member Deployments after | latency p50 | latency p99 | max | operator peak RSS | RSS after | idle CPU | reconcile errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} ({found} seen) | {arrival} | 5 | {:.1} s | {:.1} s | {:.0} ms | {:.0} ms | {:.0} ms | {peak_rss_mib:.0} MiB | {rss_mib:.0} MiB | {idle_cpu:.2} % of a core | {errors} |",
        applied.as_secs_f64(),
        total.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    );
    drop(tb);
    // The member watches would retry forever against the stopped testbed.
    std::process::exit(0);
}

/// The API server's `apiserver_request_total` summed by verb and resource (the workload
/// resources only: what the operator and the benchmark cause, not the testbed's own loops).
async fn request_counts(client: &kube::Client) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(req) = kube::core::Request::new("").get("metrics", &Default::default()) else {
        return out;
    };
    let text = client.request_text(req).await.unwrap_or_default();
    let label = |line: &str, key: &str| -> String {
        line.split(&format!("{key}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let resource = label(line, "resource");
        let wanted = [
            "aiservices",
            "cloudpools",
            "events",
            "namespaces",
            "deployments",
            "leases",
            "secrets",
            "nodes",
            "pods",
        ];
        if !wanted.contains(&resource.as_str()) {
            continue;
        }
        let sub = label(line, "subresource");
        let key = format!(
            "{} {resource}{}{sub}",
            label(line, "verb"),
            if sub.is_empty() { "" } else { "/" }
        );
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(key).or_default() += v;
    }
    out
}

/// GET /metrics with a bare HTTP/1.0 request (no HTTP client dependency for one call).
async fn reqwest_less_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
