//! CASE-09: the member Deployment watch survives a watch that ends with 410 Gone. Against a
//! tower-test mock apiserver (exact call sequence: list, watch, relist, watch), the store
//! drops what the relist no longer has, takes what it has, and later events still arrive.

use std::sync::Mutex;

use http::{Request, Response};
use kube::client::Body;
use tower_test::mock;

use super::*;
use crate::identity::{ownership_annotations, workload_labels};

const CONTROL_PLANE: &str = "cp";

fn deployment(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": "team-a",
            "labels": workload_labels("team-a", name),
            "annotations": ownership_annotations("team-a", name, "uid", CONTROL_PLANE),
        },
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {}},
    })
}

fn list(resource_version: &str, names: &[&str]) -> Response<Body> {
    let doc = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DeploymentList",
        "metadata": {"resourceVersion": resource_version},
        "items": names.iter().map(|n| deployment(n)).collect::<Vec<_>>(),
    });
    Response::new(Body::from(doc.to_string().into_bytes()))
}

fn watch_events(events: &[serde_json::Value]) -> Response<Body> {
    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    Response::new(Body::from(lines.into_bytes()))
}

/// Waits for the next request, checks it is a list (or a watch from `watch_from`) of the
/// managed Deployments, and returns the responder.
async fn expect(
    handle: &mut mock::Handle<Request<Body>, Response<Body>>,
    watch_from: Option<&str>,
) -> mock::SendResponse<Response<Body>> {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the watcher asks again")
        .expect("the client is alive");
    let uri = request.uri().to_string();
    assert_eq!(request.method(), http::Method::GET, "{uri}");
    assert!(uri.starts_with("/apis/apps/v1/deployments?"), "{uri}");
    assert!(uri.contains("labelSelector="), "{uri}");
    match watch_from {
        None => assert!(!uri.contains("watch=true"), "a list, not {uri}"),
        Some(rv) => {
            assert!(uri.contains("watch=true"), "a watch, not {uri}");
            assert!(uri.contains(&format!("resourceVersion={rv}")), "{uri}");
        }
    }
    respond
}

/// A member Deployment watch running against a mock apiserver, and what it fills.
struct Watch {
    handle: mock::Handle<Request<Body>, Response<Body>>,
    store: reflector::Store<Deployment>,
    view: Arc<RwLock<MemberView>>,
    seen: Arc<Mutex<Vec<MemberEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts `watch_deployments` for member "b" on a mock client, recording every event.
fn start_watch() -> Watch {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, writer) = reflector::store::<Deployment>();
    let view = Arc::new(RwLock::new(MemberView::new("b", None)));
    let seen: Arc<Mutex<Vec<MemberEvent>>> = Arc::default();
    let record = seen.clone();
    let notify: Notify = Arc::new(move |e| record.lock().unwrap().push(e));
    let task = tokio::spawn(watch_deployments(
        "b".into(),
        client,
        writer,
        view.clone(),
        CONTROL_PLANE.into(),
        notify,
    ));
    Watch {
        handle,
        store,
        view,
        seen,
        task,
    }
}

#[tokio::test]
async fn a_watch_ending_with_410_gone_relists_and_the_store_recovers() {
    let Watch {
        mut handle,
        store,
        view,
        seen,
        task,
    } = start_watch();

    expect(&mut handle, None)
        .await
        .send_response(list("10", &["a"]));
    expect(&mut handle, Some("10")).await.send_response(watch_events(&[serde_json::json!({
        "type": "ERROR",
        "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "message": "too old resource version: 10 (15)", "reason": "Expired", "code": 410},
    })]));
    // The 410 makes the watcher list again; meanwhile "a" went and "b" came.
    expect(&mut handle, None)
        .await
        .send_response(list("20", &["b"]));
    let mut added = deployment("c");
    added["metadata"]["resourceVersion"] = "21".into();
    expect(&mut handle, Some("20"))
        .await
        .send_response(watch_events(&[
            serde_json::json!({"type": "ADDED", "object": added}),
        ]));
    // The watch went on from the event's version: nothing was dropped on the floor.
    let _pending = expect(&mut handle, Some("21")).await;

    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    assert!(read(&view).synced, "the relist finished");
    let seen = seen.lock().unwrap().clone();
    for name in ["a", "b", "c"] {
        assert!(
            seen.contains(&MemberEvent::Service("team-a".into(), name.into())),
            "{name}: {seen:?}"
        );
    }
    assert!(!task.is_finished(), "the watch task keeps running");
    task.abort();
}

fn versioned(name: &str, resource_version: &str) -> serde_json::Value {
    let mut d = deployment(name);
    d["metadata"]["resourceVersion"] = resource_version.into();
    d
}

fn versioned_list(resource_version: &str, items: &[(&str, &str)]) -> Response<Body> {
    let doc = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DeploymentList",
        "metadata": {"resourceVersion": resource_version},
        "items": items.iter().map(|(n, rv)| versioned(n, rv)).collect::<Vec<_>>(),
    });
    Response::new(Body::from(doc.to_string().into_bytes()))
}

#[tokio::test]
async fn a_relist_wakes_only_the_services_whose_deployments_changed_came_or_went() {
    let Watch {
        mut handle,
        view,
        seen,
        task,
        ..
    } = start_watch();
    let service_events = |seen: &Arc<Mutex<Vec<MemberEvent>>>| -> Vec<String> {
        let mut names: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MemberEvent::Service(_, name) => Some(name.clone()),
                MemberEvent::Member(_) => None,
            })
            .collect();
        names.sort();
        names
    };

    expect(&mut handle, None)
        .await
        .send_response(versioned_list(
            "10",
            &[("same", "5"), ("edited", "6"), ("gone", "7")],
        ));
    expect(&mut handle, Some("10")).await.send_response(watch_events(&[serde_json::json!({
        "type": "ERROR",
        "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "message": "too old resource version: 10 (15)", "reason": "Expired", "code": 410},
    })]));
    // The first list woke every service once.
    let relist = expect(&mut handle, None).await;
    assert_eq!(service_events(&seen), ["edited", "gone", "same"]);
    seen.lock().unwrap().clear();
    // Meanwhile "edited" changed, "gone" went and "new" came; "same" did not change.
    relist.send_response(versioned_list(
        "20",
        &[("same", "5"), ("edited", "8"), ("new", "9")],
    ));
    let _pending = expect(&mut handle, Some("20")).await;
    assert_eq!(service_events(&seen), ["edited", "gone", "new"]);
    assert!(read(&view).synced, "the relist finished");
    task.abort();
}
