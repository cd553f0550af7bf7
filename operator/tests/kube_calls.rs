//! The exact Kubernetes API calls, against a `tower_test` mock API server.

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use runnel_operator::crd::{
    Restore, SavepointInProgress, SavepointTrigger, StreamJobSpec, StreamJobStatus,
};
use runnel_operator::kubeio::{KubeIo, ListedPod, StatusWrite};
use runnel_operator::machine::{DisposalState, PodObs, PodPhase};
use runnel_operator::render::Owner;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type H = Handle<Request<Body>, Response<Body>>;

fn io() -> (KubeIo, H) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "ns");
    let owner = Owner {
        name: "demo".into(),
        namespace: "ns".into(),
        uid: "uid-1".into(),
    };
    (KubeIo::new(client, owner), handle)
}

/// Takes the next request and checks method and URI (path + query).
async fn expect(h: &mut H, method: Method, uri: &str) -> (Value, SendResponse<Response<Body>>) {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().to_string(), uri);
    let body = req.into_body().collect_bytes().await.unwrap();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (v, send)
}

fn reply(send: SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn conflict() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"already exists","reason":"AlreadyExists","code":409})
}

fn not_found() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"not found","reason":"NotFound","code":404})
}

fn spec() -> StreamJobSpec {
    serde_json::from_value(json!({
        "image": "runnel:1",
        "job": { "version": 1, "name": "j", "sources": [], "sinks": [] },
        "savepoints": { "directory": "s3://b/sp" }
    }))
    .unwrap()
}

fn stream_job() -> Value {
    json!({"apiVersion":"runnel.dev/v1alpha1","kind":"StreamJob",
           "metadata":{"name":"demo","namespace":"ns"},"spec": spec()})
}

#[tokio::test]
async fn status_is_written_with_server_side_apply_of_the_whole_status() {
    let (io, mut h) = io();
    let status = StreamJobStatus {
        savepoint_in_progress: Some(SavepointInProgress {
            trigger: SavepointTrigger::Upgrade,
            target_directory: "s3://b/sp/ns-demo-3".into(),
            trigger_id: None,
            stop: true,
            started_ms: 5,
            deploy_id: 2,
        }),
        savepoint_seq: 3,
        ..Default::default()
    };
    let server = tokio::spawn(async move {
        let (body, send) = expect(
            &mut h,
            Method::PATCH,
            "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo/status?&force=true&fieldManager=runnel-operator",
        )
        .await;
        assert_eq!(body["apiVersion"], "runnel.dev/v1alpha1");
        assert_eq!(body["kind"], "StreamJob");
        assert_eq!(
            body["status"]["savepointInProgress"]["targetDirectory"],
            "s3://b/sp/ns-demo-3"
        );
        assert_eq!(body["status"]["savepointInProgress"]["stop"], true);
        assert_eq!(body["status"]["savepointSeq"], 3);
        assert!(body["status"].get("deployment").is_none());
        // The version the status was decided from: a precondition.
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        let mut obj = stream_job();
        obj["metadata"]["resourceVersion"] = json!("42");
        reply(send, StatusCode::OK, obj);
    });
    assert_eq!(
        io.write_status(&status, Some("41")).await.unwrap(),
        StatusWrite::Written {
            resource_version: Some("42".into())
        }
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_status_decided_from_a_stale_object_is_not_written() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        let (body, send) = expect(
            &mut h,
            Method::PATCH,
            "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo/status?&force=true&fieldManager=runnel-operator",
        )
        .await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        reply(
            send,
            StatusCode::CONFLICT,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Operation cannot be fulfilled on streamjobs.runnel.dev \"demo\": the object has been modified; please apply your changes to the latest version and try again",
                   "reason":"Conflict","code":409}),
        );
    });
    assert_eq!(
        io.write_status(&StreamJobStatus::default(), Some("7"))
            .await
            .unwrap(),
        StatusWrite::Stale
    );
    server.await.unwrap();
}

#[tokio::test]
async fn deploy_creates_configmap_applies_service_creates_pod_and_tolerates_existing() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        let (cm, send) = expect(&mut h, Method::POST, "/api/v1/namespaces/ns/configmaps?").await;
        assert_eq!(cm["metadata"]["name"], "demo-job-4");
        assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert!(cm["data"]["job.yaml"].as_str().unwrap().contains("name: j"));
        reply(send, StatusCode::CONFLICT, conflict());
        let (svc, send) = expect(
            &mut h,
            Method::PATCH,
            "/api/v1/namespaces/ns/services/demo-control?&force=true&fieldManager=runnel-operator",
        )
        .await;
        assert_eq!(svc["spec"]["selector"]["runnel.dev/job"], "demo");
        assert_eq!(svc["spec"]["ports"][0]["port"], 8081);
        reply(send, StatusCode::OK, svc.clone());
        let (pod, send) = expect(&mut h, Method::POST, "/api/v1/namespaces/ns/pods?").await;
        assert_eq!(pod["metadata"]["name"], "demo-4");
        assert_eq!(pod["metadata"]["labels"]["runnel.dev/spec-generation"], "9");
        assert_eq!(pod["metadata"]["labels"]["runnel.dev/deploy-id"], "4");
        let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--from-savepoint", "s3://b/sp/x"]),
            "{args:?}"
        );
        reply(send, StatusCode::CONFLICT, conflict());
    });
    io.deploy(4, 9, &spec(), &Restore::Savepoint("s3://b/sp/x".into()))
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn pods_are_listed_by_label_and_deleted_with_their_configmaps() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        let (_, send) = expect(
            &mut h,
            Method::GET,
            "/api/v1/namespaces/ns/pods?&labelSelector=runnel.dev%2Fjob%3Ddemo",
        )
        .await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":[
                {"metadata":{"name":"demo-1","labels":{"runnel.dev/deploy-id":"1"}},
                 "status":{"phase":"Failed","podIP":"10.0.0.1"}},
                {"metadata":{"name":"demo-2","labels":{"runnel.dev/deploy-id":"2"}},
                 "status":{"phase":"Running","podIP":"10.0.0.2"}},
                {"metadata":{"name":"stray","labels":{}}}
            ]}),
        );
        let (body, send) =
            expect(&mut h, Method::DELETE, "/api/v1/namespaces/ns/pods/demo-1?").await;
        assert_eq!(body["propagationPolicy"], "Background");
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"demo-1"}}),
        );
        let (_, send) = expect(
            &mut h,
            Method::DELETE,
            "/api/v1/namespaces/ns/configmaps/demo-job-1?",
        )
        .await;
        reply(send, StatusCode::NOT_FOUND, not_found());
    });
    let pods = io.list_pods().await.unwrap();
    assert_eq!(
        pods,
        vec![
            ListedPod {
                obs: PodObs {
                    deploy_id: 1,
                    phase: PodPhase::Failed
                },
                ip: Some("10.0.0.1".into()),
                workers: 0,
            },
            ListedPod {
                obs: PodObs {
                    deploy_id: 2,
                    phase: PodPhase::Running
                },
                ip: Some("10.0.0.2".into()),
                workers: 0,
            },
        ]
    );
    io.delete_pods(&pods, Some(2)).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn annotation_removal_is_a_merge_patch_with_null() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(
            req.uri().to_string(),
            "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo?"
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/merge-patch+json"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"metadata":{"annotations":{"runnel.dev/savepoint":null}}})
        );
        reply(send, StatusCode::OK, stream_job());
    });
    io.remove_savepoint_annotation().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn disposal_jobs_are_created_listed_and_forgotten() {
    let (io, mut h) = io();
    let cmd = vec!["runnel".to_string(), "savepoint".into(), "dispose".into()];
    let name = runnel_operator::render::dispose_job_name("demo", "s3://b/sp/1");
    let n2 = name.clone();
    let server = tokio::spawn(async move {
        let (job, send) = expect(&mut h, Method::POST, "/apis/batch/v1/namespaces/ns/jobs?").await;
        assert_eq!(job["metadata"]["name"], n2.as_str());
        assert_eq!(
            job["metadata"]["annotations"]["runnel.dev/savepoint-path"],
            "s3://b/sp/1"
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["savepoint", "dispose", "s3://b/sp/1"])
        );
        reply(send, StatusCode::CREATED, job.clone());
        let (_, send) = expect(
            &mut h,
            Method::GET,
            "/apis/batch/v1/namespaces/ns/jobs?&labelSelector=runnel.dev%2Fdispose-for%3Ddemo",
        )
        .await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion":"batch/v1","kind":"JobList","metadata":{},"items":[
                {"metadata":{"name":"a","annotations":{"runnel.dev/savepoint-path":"s3://b/sp/1"}},
                 "status":{"succeeded":1}},
                {"metadata":{"name":"b","annotations":{"runnel.dev/savepoint-path":"s3://b/sp/2"}},
                 "status":{"conditions":[{"type":"Failed","status":"True","message":"BackoffLimitExceeded"}]}},
                {"metadata":{"name":"c","annotations":{"runnel.dev/savepoint-path":"s3://b/sp/3"}},
                 "status":{"active":1}}
            ]}),
        );
        let (_, send) = expect(
            &mut h,
            Method::DELETE,
            &format!("/apis/batch/v1/namespaces/ns/jobs/{n2}?"),
        )
        .await;
        reply(send, StatusCode::NOT_FOUND, not_found());
    });
    io.start_disposal(&spec(), "s3://b/sp/1", &cmd)
        .await
        .unwrap();
    let d = io.list_disposals().await.unwrap();
    let states: Vec<_> = d
        .iter()
        .map(|d| (d.path.as_str(), d.state.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("s3://b/sp/1", DisposalState::Succeeded),
            (
                "s3://b/sp/2",
                DisposalState::Failed("BackoffLimitExceeded".into())
            ),
            ("s3://b/sp/3", DisposalState::Running),
        ]
    );
    io.forget_disposal("s3://b/sp/1").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn api_errors_other_than_conflict_are_reported() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::POST, "/api/v1/namespaces/ns/configmaps?").await;
        reply(
            send,
            StatusCode::FORBIDDEN,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"configmaps is forbidden","reason":"Forbidden","code":403}),
        );
    });
    let e = io.deploy(1, 1, &spec(), &Restore::Empty).await.unwrap_err();
    assert!(e.to_string().contains("create the job ConfigMap"), "{e}");
    assert!(e.to_string().contains("forbidden"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn runtime_defaults_reach_the_pod_and_the_disposal_job_but_never_override_the_template() {
    use runnel_operator::defaults::{RuntimeDefaults, parse_env};
    let (io, mut h) = io();
    let defaults = RuntimeDefaults {
        image: Some("runnel:default".into()),
        s3_credentials_secret: Some("runnel-s3".into()),
        env: vec![
            parse_env("AWS_ENDPOINT_URL_S3=http://s3:5000").unwrap(),
            parse_env("AWS_REGION=us-east-1").unwrap(),
        ],
    };
    let io = io.with_defaults(defaults.clone());
    // A spec without image or S3 Secret whose template sets AWS_REGION itself.
    let own: StreamJobSpec = serde_json::from_value(json!({
        "job": { "version": 1, "name": "j", "sources": [], "sinks": [] },
        "savepoints": { "directory": "s3://b/sp" },
        "podTemplate": { "spec": { "containers": [
            { "name": "runtime", "env": [{ "name": "AWS_REGION", "value": "eu-west-1" }] }
        ] } }
    }))
    .unwrap();
    let spec = defaults.resolve(&own).into_owned();
    let server = tokio::spawn(async move {
        let (_, send) = expect(&mut h, Method::POST, "/api/v1/namespaces/ns/configmaps?").await;
        reply(send, StatusCode::CONFLICT, conflict());
        let (svc, send) = expect(
            &mut h,
            Method::PATCH,
            "/api/v1/namespaces/ns/services/demo-control?&force=true&fieldManager=runnel-operator",
        )
        .await;
        reply(send, StatusCode::OK, svc);
        let (pod, send) = expect(&mut h, Method::POST, "/api/v1/namespaces/ns/pods?").await;
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "runnel:default");
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "runnel-s3");
        assert_eq!(
            c["env"],
            json!([
                { "name": "AWS_REGION", "value": "eu-west-1" },
                { "name": "AWS_ENDPOINT_URL_S3", "value": "http://s3:5000" }
            ])
        );
        reply(send, StatusCode::CREATED, pod.clone());
        let (job, send) = expect(&mut h, Method::POST, "/apis/batch/v1/namespaces/ns/jobs?").await;
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "runnel:default");
        assert_eq!(
            c["env"],
            json!([
                { "name": "AWS_ENDPOINT_URL_S3", "value": "http://s3:5000" },
                { "name": "AWS_REGION", "value": "us-east-1" }
            ])
        );
        reply(send, StatusCode::CREATED, job.clone());
    });
    io.deploy(1, 1, &spec, &Restore::Empty).await.unwrap();
    let cmd = vec!["runnel".to_string(), "savepoint".into(), "dispose".into()];
    io.start_disposal(&spec, "s3://b/sp/1", &cmd).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn finalizers_are_set_with_a_merge_patch_and_a_gone_object_is_fine() {
    let (io, mut h) = io();
    let server = tokio::spawn(async move {
        for found in [true, false] {
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(
                req.uri().to_string(),
                "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo?"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/merge-patch+json"
            );
            let body: Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            if found {
                assert_eq!(
                    body,
                    json!({"metadata":{"finalizers":["other.io/keep","runnel.dev/final-savepoint"]}})
                );
                reply(send, StatusCode::OK, stream_job());
            } else {
                assert_eq!(body, json!({"metadata":{"finalizers":[]}}));
                reply(send, StatusCode::NOT_FOUND, not_found());
            }
        }
    });
    io.set_finalizers(vec![
        "other.io/keep".into(),
        "runnel.dev/final-savepoint".into(),
    ])
    .await
    .unwrap();
    // Deleted meanwhile: nothing left to hold.
    io.set_finalizers(vec![]).await.unwrap();
    server.await.unwrap();
}

/// An Event the machine emits is created in the StreamJob's namespace through
/// events.k8s.io/v1, naming the StreamJob, the operator as reporter, its type
/// and reason, and the message (cut at 1,000 characters).
#[tokio::test]
async fn events_are_created_for_the_streamjob() {
    use kube::Resource;
    use kube::runtime::events::{Recorder, Reporter};
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "ns");
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "runnel-operator".into(),
            instance: Some("op-0".into()),
        },
    );
    let sj: runnel_operator::crd::StreamJob = serde_json::from_value(json!({
        "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1"},
        "spec": spec()
    }))
    .unwrap();
    let reference = sj.object_ref(&());
    let long = "x".repeat(1500);
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/ns/events"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "SavepointFailed");
        assert_eq!(body["action"], "Reconcile");
        assert_eq!(body["note"].as_str().unwrap().len(), 1000);
        assert_eq!(body["regarding"]["kind"], "StreamJob");
        assert_eq!(body["regarding"]["name"], "demo");
        assert_eq!(body["regarding"]["uid"], "uid-1");
        assert_eq!(body["reportingController"], "runnel-operator");
        assert_eq!(body["reportingInstance"], "op-0");
        reply(send, StatusCode::CREATED, body);
    });
    let ev = runnel_operator::controller::event_for(true, "SavepointFailed", &long);
    recorder.publish(&ev, &reference).await.unwrap();
    server.await.unwrap();
}
