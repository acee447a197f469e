//! `backfill --json` and `verify --json`: JSON lines on stdout, read field by field the way a
//! script reads them.

use graph_emulator::{Fault, FaultRule, Match};
use serde_json::Value;

use crate::helpers::{jpeg, text, unique_jpeg, Env};

/// Every stdout line parsed; each must be one JSON object with a `type`.
fn lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["type"].is_string(), "no type: {l}");
            v
        })
        .collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

fn item<'a>(items: &[&'a Value], path_end: &str) -> &'a Value {
    let found: Vec<_> = items
        .iter()
        .filter(|i| i["path"].as_str().is_some_and(|p| p.ends_with(path_end)))
        .collect();
    assert_eq!(found.len(), 1, "one item for {path_end}: {items:#?}");
    found[0]
}

/// Uploads, an upload Graph refuses, a parked photo, a file with no target, and skipped files.
async fn tree() -> Env {
    let env = Env::new().await;
    for i in 0..8 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    env.add_user("bob@contoso.com");
    env.put("users/bob@contoso.com.jpg", &jpeg(20));
    env.put("users/ghost@contoso.com.jpg", &jpeg(21));
    env.put("users/not-a-upn.jpg", &jpeg(22));
    env.put("users/.hidden@contoso.com.jpg", &jpeg(23));
    env.put("contacts/archive/owner@contoso.com/c1.jpg", &jpeg(24));
    // Paced, so the pass lasts long enough for status lines while syncing. The `exclude`
    // lands in the last [[source]] table, the contacts.
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 2\nrequests_per_second = 4.0\nburst = 1\nmax_attempts = 2\n",
        "[image]\nmode = \"passthrough\"\n",
        "exclude = [\"archive/**\"]\n",
    );
    env.emu.push_fault(FaultRule {
        matcher: Match::Target("user:bob@contoso.com".into()),
        fault: Fault::Status {
            status: 403,
            code: "ErrorAccessDenied".into(),
            retry_after: None,
        },
        times: 100,
    });
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_json_has_status_items_and_a_summary_field_by_field() {
    let env = tree().await;
    let out = env.run(&["backfill", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = lines(&out);
    let last = lines.last().expect("lines");
    assert_eq!(last["type"], "summary", "the summary comes last");
    assert_eq!(of_type(&lines, "summary").len(), 1);

    let s = last;
    assert!(s["run"].is_null(), "{s}");
    assert_eq!(s["dry_run"], false);
    assert_eq!(s["files"], 10, "{s}");
    assert_eq!(s["uploaded"], 8, "{s}");
    assert_eq!(s["unchanged"], 0, "{s}");
    assert_eq!(s["parked"], 1, "{s}");
    assert_eq!(s["failed"], 2, "{s}");
    assert_eq!(s["skipped"], 2, "{s}");
    assert_eq!(s["skipped_by_reason"]["hidden"], 1, "{s}");
    assert_eq!(s["skipped_by_reason"]["excluded"], 1, "{s}");
    assert_eq!(s["deleted"], 0, "{s}");
    let sent: u64 = (0..8).map(|i| jpeg(i).len() as u64).sum();
    assert_eq!(s["bytes_uploaded"], sent, "{s}");
    assert!(s["bytes_read"].as_u64().unwrap() >= sent, "{s}");
    assert!(s["elapsed_seconds"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["stopped"].is_null(), "{s}");
    assert_eq!(s["exit_code"], 1, "{s}");

    let items = of_type(&lines, "item");
    let up = item(&items, "users/user3@contoso.com.jpg");
    assert_eq!(up["target"], "user:user3@contoso.com");
    assert_eq!(up["action"], "upload");
    assert_eq!(up["result"], "uploaded (new)");
    assert_eq!(up["bytes_before"], jpeg(3).len());
    assert_eq!(up["bytes_after"], jpeg(3).len());
    assert!(up["error"].is_null(), "{up}");
    assert!(up["request_id"].is_string(), "{up}");

    let refused = item(&items, "users/bob@contoso.com.jpg");
    assert_eq!(refused["target"], "user:bob@contoso.com");
    assert_eq!(refused["action"], "upload");
    assert!(
        refused["result"].as_str().unwrap().starts_with("failed: "),
        "{refused}"
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("ErrorAccessDenied"),
        "{refused}"
    );
    assert!(refused["request_id"].is_string(), "{refused}");

    let parked = item(&items, "users/ghost@contoso.com.jpg");
    assert_eq!(parked["target"], "user:ghost@contoso.com");
    assert_eq!(parked["action"], "skip");
    assert_eq!(parked["result"], "parked");
    assert!(parked["error"].is_string(), "{parked}");

    let bad = item(&items, "users/not-a-upn.jpg");
    assert_eq!(bad["target"], "");
    assert_eq!(bad["action"], "skip");
    assert_eq!(bad["result"], "failed: bad_name");
    assert!(bad["error"].is_string(), "{bad}");

    let excluded = item(&items, "c1.jpg");
    assert_eq!(excluded["action"], "skip");
    assert_eq!(excluded["result"], "excluded");
    // A hidden file is not a photo, but every skipped file is named: an item of its own.
    let hidden: Vec<_> = items
        .iter()
        .filter(|i| i["path"].as_str().unwrap().contains(".hidden"))
        .collect();
    assert_eq!(hidden.len(), 1, "{items:#?}");
    assert_eq!(hidden[0]["action"], "skip");
    assert_eq!(hidden[0]["result"], "hidden");
    assert_eq!(items.len(), 8 + 4 + 1, "{items:#?}");

    let status = of_type(&lines, "status");
    assert!(!status.is_empty(), "no status line");
    for st in &status {
        for key in [
            "elapsed_seconds",
            "files",
            "uploaded",
            "unchanged",
            "failed",
            "parked",
            "skipped",
            "deleted",
            "queued",
            "in_flight",
            "retries",
            "throttled",
            "bytes_uploaded",
        ] {
            assert!(st[key].is_number(), "{key} in {st}");
        }
        match st["phase"].as_str() {
            Some("walking") => assert!(st["total"].is_null() && st["done"].is_null(), "{st}"),
            Some("syncing") => {
                assert_eq!(st["total"], 10, "{st}");
                assert!(st["done"].as_u64().unwrap() <= 10, "{st}");
            }
            _ => panic!("phase: {st}"),
        }
    }
    // Eight uploads at 4 a second take about two seconds: the syncing phase is reported.
    assert!(
        status.iter().any(|st| st["phase"] == "syncing"),
        "{status:#?}"
    );
    // At most one a second (elapsed is rounded to tenths).
    for pair in status.windows(2) {
        let gap = pair[1]["elapsed_seconds"].as_f64().unwrap()
            - pair[0]["elapsed_seconds"].as_f64().unwrap();
        assert!(gap >= 0.9, "status lines {gap}s apart: {pair:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_json_backfill_reports_unchanged_photos_and_keeps_the_report_file() {
    let env = tree().await;
    env.run(&["backfill"]).await;
    let report = env.path("run.csv");
    let out = env
        .run(&["backfill", "--json", "--report", report.to_str().unwrap()])
        .await;
    let lines = lines(&out);
    let s = lines.last().unwrap();
    assert_eq!(s["type"], "summary");
    assert_eq!(s["unchanged"], 8, "{s}");
    assert_eq!(s["uploaded"], 0, "{s}");
    let items = of_type(&lines, "item");
    let same = item(&items, "users/user0@contoso.com.jpg");
    assert_eq!(same["action"], "none");
    assert_eq!(same["result"], "unchanged");
    // The --report file gets the same rows as the item lines.
    let csv = std::fs::read_to_string(&report).unwrap();
    assert_eq!(csv.lines().count(), 1 + items.len(), "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_json_lists_each_drift_and_the_repair() {
    let env = Env::new().await;
    let alice = env.add_user("alice@contoso.com");
    env.add_user("bob@contoso.com");
    env.put("users/alice@contoso.com.jpg", &unique_jpeg(1));
    env.put("users/bob@contoso.com.jpg", &unique_jpeg(2));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.emu
        .set_user_photo(&alice, bytes::Bytes::from(unique_jpeg(99)));

    let out = env.run(&["verify", "--json", "--repair"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = lines(&out);
    let items = of_type(&lines, "item");
    let drift = items
        .iter()
        .find(|i| i["action"] == "verify")
        .expect("a verify item");
    assert_eq!(drift["target"], "user:alice@contoso.com");
    assert_eq!(drift["result"], "changed");
    assert!(drift["path"]
        .as_str()
        .unwrap()
        .ends_with("users/alice@contoso.com.jpg"));
    let again = items
        .iter()
        .find(|i| i["action"] == "upload")
        .expect("the repair's upload");
    assert_eq!(again["target"], "user:alice@contoso.com");
    assert!(
        again["result"].as_str().unwrap().starts_with("uploaded"),
        "{again}"
    );
    assert_eq!(items.len(), 2, "{items:#?}");
    let s = lines.last().unwrap();
    assert_eq!(s["type"], "summary");
    assert!(s["run"].is_null());
    assert_eq!(s["checked"], 2, "{s}");
    assert_eq!(s["same"], 1, "{s}");
    assert_eq!(s["drifted"], 1, "{s}");
    assert_eq!(s["unchecked"], 0, "{s}");
    assert_eq!(s["repaired"], 1, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["exit_code"], 0, "{s}");
}
