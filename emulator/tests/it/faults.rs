//! Fault injection, control endpoints and shutdown.

use std::time::{Duration, Instant};

use graph_emulator::{Fault, FaultRule, Faults, Match, RequestKind, RetryAfter};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let emu = start().await;
    let t = token(&emu).await;
    emu.set_faults(Faults {
        rate_limit: Some(2.0),
        retry_after: RetryAfter::Seconds(2.128),
        ..Faults::default()
    });
    let path = format!("/v1.0/users/{JANE_ID}/photo/$value");
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 200);
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 200);
    let resp = put_photo(&emu, &t, &path, jpeg(1)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2.128");
    assert_eq!(error_code(resp).await, "TooManyRequests");
    // Token requests are not limited.
    token(&emu).await;

    emu.set_faults(Faults {
        rate_limit: Some(0.0),
        retry_after: RetryAfter::HttpDate,
        ..Faults::default()
    });
    let resp = put_photo(&emu, &t, &path, jpeg(1)).await;
    assert_eq!(resp.status(), 429);
    let date = resp.headers()["retry-after"].to_str().unwrap().to_owned();
    assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
}

#[tokio::test]
async fn scripted_reset_drops_the_connection() {
    let emu = start().await;
    let t = token(&emu).await;
    emu.push_fault(FaultRule::new(
        Match::Target(format!("user:{JANE}")),
        Fault::Reset,
        1,
    ));
    let path = format!("/v1.0/users/{JANE_ID}/photo/$value");
    let c = client();
    let err = c
        .put(format!("{}{path}", emu.url()))
        .bearer_auth(&t)
        .header("content-type", "image/jpeg")
        .body(jpeg(1))
        .send()
        .await
        .expect_err("a reset must not produce a response");
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    // The rule is used up: the next request (on a fresh connection) succeeds.
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 200);
    let statuses: Vec<u16> = emu
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::PhotoPut)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![0, 200]);
}

#[tokio::test]
async fn scripted_status_and_stall() {
    let emu = start().await;
    let t = token(&emu).await;
    emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoPut),
        Fault::Status {
            status: 503,
            code: "serviceNotAvailable".into(),
            retry_after: Some(RetryAfter::Seconds(1.0)),
        },
        2,
    ));
    emu.push_fault(FaultRule::status(
        Match::PathContains("g-unified".into()),
        400,
        "AppOnlyTokenNotSupportedForGroupUpdate",
        1,
    ));
    emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoMeta),
        Fault::Stall(Duration::from_millis(300)),
        1,
    ));
    let path = format!("/v1.0/users/{JANE_ID}/photo/$value");
    for _ in 0..2 {
        let resp = put_photo(&emu, &t, &path, jpeg(1)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
    }
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 200);
    let resp = put_photo(&emu, &t, "/v1.0/groups/g-unified/photo/$value", jpeg(1)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        error_code(resp).await,
        "AppOnlyTokenNotSupportedForGroupUpdate"
    );

    let started = Instant::now();
    assert_eq!(
        get(&emu, &t, &format!("/v1.0/users/{JANE_ID}/photo"))
            .await
            .status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A token fault answers in Entra's shape.
    emu.push_fault(FaultRule::status(
        Match::Kind(RequestKind::Token),
        503,
        "temporarily_unavailable",
        1,
    ));
    let (status, body) = token_request(
        &emu,
        "contoso.onmicrosoft.com",
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn random_faults_are_seeded() {
    let emu = start().await;
    let t = token(&emu).await;
    let path = format!("/v1.0/users/{JANE_ID}/photo");
    let run = |seed| Faults {
        error_500: 0.3,
        error_503: 0.3,
        seed,
        ..Faults::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        emu.set_faults(run(42));
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(get(&emu, &t, &path).await.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&500) && runs[0].contains(&503) && runs[0].contains(&200));
}

#[tokio::test]
async fn control_endpoints() {
    let emu = start().await;
    let t = token(&emu).await;
    let c = client();
    let resp = c
        .post(format!("{}/_emulator/faults", emu.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"error_500": 1.0, "latency": "1ms"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let path = format!("/v1.0/users/{JANE_ID}/photo/$value");
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 500);
    let resp = c
        .post(format!("{}/_emulator/faults", emu.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(put_photo(&emu, &t, &path, jpeg(1)).await.status(), 200);
    let bad = c
        .post(format!("{}/_emulator/faults", emu.url()))
        .body(r#"{"nonsense": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let stats: Value = c
        .get(format!("{}/_emulator/stats", emu.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 3, "{stats}");
    assert_eq!(stats["uploads"], 1);
    assert_eq!(stats["tokens_issued"], 1);
    assert_eq!(stats["by_status"]["500"], 1);
    assert_eq!(stats["by_kind"]["PhotoPut"], 2);
    assert_eq!(stats["max_in_any_1s_window"], 2);
    assert!(stats["first_upload_at_ms"].is_u64());

    let resp = c
        .post(format!("{}/_emulator/reset-stats", emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = emu.stats();
    assert_eq!(stats["requests"], 0);
    assert!(stats["first_upload_at_ms"].is_null());
    assert!(emu.requests().is_empty());
}

#[tokio::test]
async fn shutdown_is_bounded() {
    let emu = start().await;
    let c = client();
    // Leaves a pooled keep-alive connection open.
    let resp = c
        .get(format!("{}/_emulator/stats", emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // And one request stalled far beyond the grace period.
    let t = token(&emu).await;
    emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoMeta),
        Fault::Stall(Duration::from_secs(60)),
        1,
    ));
    let stalled = tokio::spawn({
        let (c, url, t) = (c.clone(), emu.url(), t.clone());
        async move {
            c.get(format!("{url}/v1.0/users/{JANE_ID}/photo"))
                .bearer_auth(t)
                .send()
                .await
        }
    });
    while emu.stats()["max_in_flight"] != 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = emu.url();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), emu.shutdown())
        .await
        .expect("shutdown must be bounded");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(stalled.await.unwrap().is_err());
    assert!(c
        .get(format!("{url}/_emulator/stats"))
        .send()
        .await
        .is_err());
}
