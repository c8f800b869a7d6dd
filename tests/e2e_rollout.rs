//! Rollouts and other writers on the testbed: a price change moves a service
//! make-before-break and a price that flips back mid-way turns it around once (CASE-05); a
//! saving below minSavingsPercent moves nothing; a target that never turns Ready stalls the
//! move without touching the source (MigrationStalled); a member rollout past its deadline
//! reports ProgressDeadlineExceeded (CASE-12); a manual scale in a member is reverted and
//! `scaling.mode: Member` leaves the count to the member (CASE-10).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use skyloom_api::AIService;
use skyloom_e2e::moves::{Sampler, Trace};
use skyloom_e2e::operator::{OperatorHandle, register_priced_members, test_args};
use skyloom_e2e::{
    TestNamespace, eventually, gpu_service, member_replica_pair, member_replicas, remove_service,
    run_kubectl, service_ready, set_gpu_price, shared,
};
use skyloom_testbed::{Member, Testbed};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

const AZURE: &str = "azure-eastus";
const GCP: &str = "gcp-europe-west4";

/// How often at most this file's operator puts back a replica count that keeps changing.
const SCALING_WINDOW: Duration = Duration::from_secs(10);

static ENV: OnceCell<OperatorHandle> = OnceCell::const_new();
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The shared testbed with the operator running, prices reset to azure 2.00 < gcp 2.50 <
/// aws 3.00, one test at a time (tests change prices).
async fn env() -> (&'static Testbed, MutexGuard<'static, ()>) {
    let guard = SERIAL.lock().await;
    let tb = shared().await;
    register_priced_members(tb)
        .await
        .expect("members registered");
    ENV.get_or_init(|| async {
        let mut args = test_args();
        args.scaling_conflict_window_seconds = SCALING_WINDOW.as_secs();
        OperatorHandle::start(tb, args)
    })
    .await;
    (tb, guard)
}

fn service(name: &str, replicas: i32) -> serde_json::Value {
    let mut doc = gpu_service(name, replicas);
    doc["spec"]["migration"] =
        serde_json::json!({"maxSurge": 1, "maxUnavailable": 0, "timeoutSeconds": 30});
    doc
}

async fn apply(hub: &Client, ns: &str, doc: &serde_json::Value) {
    let name = doc["metadata"]["name"].as_str().unwrap();
    Api::<AIService>::namespaced(hub.clone(), ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(doc))
        .await
        .unwrap();
}

/// Successful server-side applies of the Deployment `ns/name` in `member` received since
/// `since`, from its apiserver's audit log (kubectl's scale and the controllers' status
/// writes are other verbs or subresources).
fn operator_applies(member: &Member, ns: &str, name: &str, since: SystemTime) -> usize {
    member
        .audit_writes()
        .unwrap()
        .iter()
        .filter(|w| w.verb == "patch" && w.succeeded() && w.received() >= since)
        .filter(|w| {
            w.object_ref.as_ref().is_some_and(|o| {
                o.resource == "deployments"
                    && o.subresource.is_empty()
                    && o.namespace == ns
                    && o.name == name
            })
        })
        .count()
}

/// Waits until `name` runs `n` replicas, all Available, in `pool` alone and is Ready.
async fn settle_on(tb: &Testbed, hub: &Client, ns: &str, name: &str, pool: &str, n: i32) {
    eventually(
        Duration::from_secs(75),
        &format!("{n} replicas on {pool} alone"),
        || async {
            (member_replicas(tb, ns, name).await == BTreeMap::from([(pool.to_owned(), (n, n))])
                && service_ready(hub, ns, name).await)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

/// Applies `doc` and waits until it is Ready with every replica on azure (the cheapest).
async fn start_on_azure(tb: &Testbed, hub: &Client, ns: &str, doc: &serde_json::Value) {
    apply(hub, ns, doc).await;
    let name = doc["metadata"]["name"].as_str().unwrap();
    let n = i32::try_from(doc["spec"]["replicas"].as_i64().unwrap()).unwrap();
    settle_on(tb, hub, ns, name, AZURE, n).await;
}

async fn conditions(hub: &Client, ns: &str, name: &str) -> Vec<Condition> {
    let api: Api<AIService> = Api::namespaced(hub.clone(), ns);
    api.get(name)
        .await
        .ok()
        .and_then(|a| a.status)
        .map(|s| s.conditions)
        .unwrap_or_default()
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheaper_cloud_gets_the_replicas_make_before_break() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "mv-price").await.unwrap();
    start_on_azure(tb, &hub, &ns.name, &service("llm", 4)).await;
    let sampler = Sampler::start(tb, &ns.name, "llm", 4, (AZURE, GCP));
    set_gpu_price(&hub, GCP, "1.00").await.unwrap();
    settle_on(tb, &hub, &ns.name, "llm", GCP, 4).await;
    let trace = sampler.finish().await;
    trace.assert_make_before_break(4, 1);
    // One step per surge replica, as the target's audit log shows: 4 applies, not one swap.
    let steps = operator_applies(
        tb.member(GCP).unwrap(),
        &ns.name,
        "llm",
        SystemTime::UNIX_EPOCH,
    );
    assert!(steps >= 4, "the move went in {steps} steps: {trace:?}");
    remove_service(tb, &hub, ns, "llm").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_that_flips_back_mid_move_turns_each_member_around_once() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "mv-flip").await.unwrap();
    start_on_azure(tb, &hub, &ns.name, &service("flip", 4)).await;
    let sampler = Sampler::start(tb, &ns.name, "flip", 4, (AZURE, GCP));
    set_gpu_price(&hub, GCP, "1.00").await.unwrap();
    eventually(Duration::from_secs(30), "the move to start", || async {
        let on_gcp = member_replicas(tb, &ns.name, "flip")
            .await
            .get(GCP)
            .copied();
        on_gcp
            .is_some_and(|(_, available)| available >= 1)
            .then_some(())
    })
    .await
    .unwrap();
    // Halfway: gcp is dear again, so the replicas go back to azure.
    set_gpu_price(&hub, GCP, "2.50").await.unwrap();
    settle_on(tb, &hub, &ns.name, "flip", AZURE, 4).await;
    let trace = sampler.finish().await;
    trace.assert_make_before_break(4, 1);
    assert!(
        Trace::turns(&trace.source) <= 1 && Trace::turns(&trace.target) <= 1,
        "a member changed direction more than once: {trace:?}"
    );
    remove_service(tb, &hub, ns, "flip").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saving_below_min_savings_percent_moves_nothing() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "mv-small").await.unwrap();
    start_on_azure(tb, &hub, &ns.name, &service("steady", 2)).await;
    // gcp at 1.90 is about 5% cheaper per replica than azure at 2.00: less than the 10% default.
    set_gpu_price(&hub, GCP, "1.90").await.unwrap();
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    let why = eventually(
        Duration::from_secs(30),
        "the solver to weigh the cheaper gcp",
        || async {
            let placed = member_replicas(tb, &ns.name, "steady").await;
            assert_eq!(
                placed.keys().collect::<Vec<_>>(),
                vec![AZURE],
                "a replica moved"
            );
            let explanation = api.get("steady").await.ok()?.status?.explanation?;
            let text = serde_json::to_string(&explanation).ok()?;
            text.contains("minSavingsPercent").then_some(text)
        },
    )
    .await
    .unwrap();
    assert!(why.contains(GCP), "{why}");
    assert_eq!(
        member_replicas(tb, &ns.name, "steady").await,
        BTreeMap::from([(AZURE.to_owned(), (2, 2))])
    );
    remove_service(tb, &hub, ns, "steady").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_turns_ready_stalls_the_move_and_keeps_the_source() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "mv-stall").await.unwrap();
    let mut doc = service("stuck", 2);
    // gcp's Pods run but never turn Ready (say, no GPU driver there); azure's are fine.
    doc["spec"]["template"]["metadata"] =
        serde_json::json!({"annotations": {"testbed.skyloom.io/never-ready": GCP}});
    start_on_azure(tb, &hub, &ns.name, &doc).await;
    let sampler = Sampler::start(tb, &ns.name, "stuck", 2, (AZURE, GCP));
    let started = Instant::now();
    set_gpu_price(&hub, GCP, "1.00").await.unwrap();
    eventually(Duration::from_secs(20), "the move to start", || async {
        member_replicas(tb, &ns.name, "stuck")
            .await
            .contains_key(GCP)
            .then_some(())
    })
    .await
    .unwrap();
    let stalled = eventually(Duration::from_secs(75), "MigrationStalled", || async {
        find(
            &conditions(&hub, &ns.name, "stuck").await,
            "MigrationStalled",
        )
        .filter(|c| c.status == "True")
        .cloned()
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "given up before migration.timeoutSeconds"
    );
    assert_eq!(stalled.reason, "ProgressDeadlineExceeded");
    assert!(stalled.message.contains(GCP), "{}", stalled.message);
    // The target's surplus goes; the source was never drained; the service stays Ready.
    settle_on(tb, &hub, &ns.name, "stuck", AZURE, 2).await;
    // The operator stops trying: gcp is avoided while nothing changes.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            !member_replicas(tb, &ns.name, "stuck")
                .await
                .contains_key(GCP),
            "the given-up move was tried again"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sampler.finish().await.assert_make_before_break(2, 1);
    let events: Api<Event> = Api::namespaced(hub.clone(), &ns.name);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("MigrationStalled=True") && n.contains(GCP)),
        "no MigrationStalled Event: {notes:?}"
    );
    remove_service(tb, &hub, ns, "stuck").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_past_its_deadline_reports_progress_deadline_exceeded() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "ro-deadline").await.unwrap();
    let doc = service("rollout", 2);
    start_on_azure(tb, &hub, &ns.name, &doc).await;
    // Generation 2: a template whose Pods never turn Ready anywhere (a broken image).
    let mut broken = doc.clone();
    broken["spec"]["template"]["metadata"] =
        serde_json::json!({"annotations": {"testbed.skyloom.io/never-ready": "true"}});
    apply(&hub, &ns.name, &broken).await;
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    let status = eventually(
        Duration::from_secs(75),
        "Progressing=False ProgressDeadlineExceeded",
        || async {
            let status = api.get("rollout").await.ok()?.status?;
            let p = find(&status.conditions, "Progressing")?;
            (p.status == "False" && p.reason == "ProgressDeadlineExceeded").then_some(status)
        },
    )
    .await
    .unwrap();
    let stalled = find(&status.conditions, "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert_eq!(find(&status.conditions, "Ready").unwrap().status, "False");
    assert_eq!(
        find(&status.conditions, "Available").unwrap().status,
        "True",
        "the old Pods keep serving"
    );
    let azure = status.placements.iter().find(|p| p.cloud == AZURE).unwrap();
    assert_eq!(azure.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    // Generation 3 reverts the template: Ready again.
    apply(&hub, &ns.name, &doc).await;
    eventually(
        Duration::from_secs(60),
        "Ready after the revert",
        || async {
            let ready = service_ready(&hub, &ns.name, "rollout").await;
            let p = find(&conditions(&hub, &ns.name, "rollout").await, "Progressing").cloned()?;
            (ready && p.status == "True").then_some(())
        },
    )
    .await
    .unwrap();
    remove_service(tb, &hub, ns, "rollout").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_scale_in_a_member_is_reverted() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "wr-scale").await.unwrap();
    start_on_azure(tb, &hub, &ns.name, &service("owned", 2)).await;
    let azure = tb.member(AZURE).unwrap();
    let scaled_at = SystemTime::now();
    let (ok, _, err) = run_kubectl(
        azure,
        &["scale", "deploy/owned", "-n", &ns.name, "--replicas=4"],
    );
    assert!(ok, "{err}");
    eventually(
        Duration::from_secs(30),
        "the scale to be reverted",
        || async {
            (member_replica_pair(azure, &ns.name, "owned").await == Some((2, 2))
                && service_ready(&hub, &ns.name, "owned").await)
                .then_some(())
        },
    )
    .await
    .unwrap();
    // No fight: a few more seconds, and the operator wrote the object at most 3 times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = operator_applies(azure, &ns.name, "owned", scaled_at);
    assert!(writes <= 3, "{writes} writes after the manual scale");
    remove_service(tb, &hub, ns, "owned").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_scaling_mode_leaves_the_replica_count_to_the_member() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "wr-member").await.unwrap();
    let mut doc = service("autoscaled", 2);
    doc["spec"]["scaling"] = serde_json::json!({"mode": "Member"});
    start_on_azure(tb, &hub, &ns.name, &doc).await;
    let azure = tb.member(AZURE).unwrap();
    let deployments: Api<Deployment> =
        Api::namespaced(azure.direct_client().await.unwrap(), &ns.name);
    let owns_replicas = |d: &Deployment, manager: &str| {
        d.metadata.managed_fields.iter().flatten().any(|f| {
            f.manager.as_deref() == Some(manager)
                && f.fields_v1
                    .as_ref()
                    .is_some_and(|v| v.0.pointer("/f:spec/f:replicas").is_some())
        })
    };
    let d = deployments.get("autoscaled").await.unwrap();
    assert!(
        !owns_replicas(&d, "skyloom"),
        "Skyloom's field manager owns spec.replicas: {:?}",
        d.metadata.managed_fields
    );
    // The member (an HPA, here kubectl) picks 3; Skyloom reports it and leaves it.
    let (ok, _, err) = run_kubectl(
        azure,
        &["scale", "deploy/autoscaled", "-n", &ns.name, "--replicas=3"],
    );
    assert!(ok, "{err}");
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    eventually(Duration::from_secs(30), "status to report 3", || async {
        let status = api.get("autoscaled").await.ok()?.status?;
        (status.replicas == Some(3)
            && status.available_replicas == Some(3)
            && service_ready(&hub, &ns.name, "autoscaled").await)
            .then_some(())
    })
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            member_replica_pair(azure, &ns.name, "autoscaled")
                .await
                .map(|p| p.0),
            Some(3),
            "Skyloom overwrote the member's count"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let d = deployments.get("autoscaled").await.unwrap();
    assert!(!owns_replicas(&d, "skyloom"));
    remove_service(tb, &hub, ns, "autoscaled").await.unwrap();
}

/// CASE-10 V2, default mode: a writer that keeps scaling the member Deployment (as an HPA
/// would) is not fought on every change: Skyloom puts its count back at most once per
/// window, says `ScalingConflict` meanwhile, and settles once the writer stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_keeps_scaling_is_put_back_once_per_window() {
    let (tb, _serial) = env().await;
    let hub = tb.hub().client().await.unwrap();
    let ns = TestNamespace::create(&hub, "wr-fight").await.unwrap();
    start_on_azure(tb, &hub, &ns.name, &service("fought", 2)).await;
    let azure = tb.member(AZURE).unwrap();
    let api: Api<AIService> = Api::namespaced(hub.clone(), &ns.name);
    let conflict = || async {
        let ais = api.get("fought").await.ok()?;
        let c = ais
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "ScalingConflict")?;
        Some((c.status, c.reason, c.message))
    };
    // The writer sets 3 every second for the length of one window.
    let fight_start = SystemTime::now();
    let mut seen_conflict = None;
    let until = Instant::now() + SCALING_WINDOW;
    while Instant::now() < until {
        let (ok, _, err) = run_kubectl(
            azure,
            &["scale", "deploy/fought", "-n", &ns.name, "--replicas=3"],
        );
        assert!(ok, "{err}");
        if let Some(c) = conflict().await.filter(|c| c.0 == "True") {
            seen_conflict.get_or_insert(c);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let writes = operator_applies(azure, &ns.name, "fought", fight_start);
    assert!(
        writes <= 2,
        "{writes} applies while the writer kept scaling for {SCALING_WINDOW:?}"
    );
    let (_, reason, message) = seen_conflict.expect("ScalingConflict=True during the fight");
    assert_eq!(reason, "ReplicasChangedInMember");
    assert!(message.contains(AZURE), "{message}");
    // The writer stops: the count is put back and the conflict clears.
    settle_on(tb, &hub, &ns.name, "fought", AZURE, 2).await;
    eventually(Duration::from_secs(30), "ScalingConflict=False", || async {
        (conflict().await?.0 == "False").then_some(())
    })
    .await
    .unwrap();
    remove_service(tb, &hub, ns, "fought").await.unwrap();
}
