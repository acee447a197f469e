//! Identity resolution (employee_id, mail, mapping files, parked new hires) and the operator
//! tools around it: reports, budgets, globs, `verify`.

use std::time::Duration;

use graph_emulator::{RequestKind, User};

use crate::helpers::{
    spawn_daemon, status_json, text, unique_jpeg, upload_requests, uploads_ok, uuid_for,
    wait_until, Env,
};

fn lookups(env: &Env) -> Vec<graph_emulator::Recorded> {
    env.emu
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::UserQuery)
        .collect()
}

/// A user with an employeeId and a mail address; returns its object id.
fn add_employee(env: &Env, upn: &str, employee_id: &str, mail: &str) -> String {
    let id = uuid_for(upn);
    env.emu.add_user(
        User::new(&id, upn)
            .with_employee_id(employee_id)
            .with_mail(mail),
    );
    id
}

fn staff_source(key: &str, extra: &str) -> String {
    format!("\n[[source]]\nroot = \"staff\"\ntarget = \"user\"\nkey = \"{key}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn employee_ids_resolve_in_batches_and_are_cached() {
    let env = Env::new().await;
    env.write_config(&staff_source("employee_id", ""));
    let mut ids = Vec::new();
    for n in 0..100u32 {
        // Leading zeros are part of an employee id; one has a quote in it.
        let eid = if n == 7 {
            "O'Brien-7".to_owned()
        } else {
            format!("{n:06}")
        };
        ids.push(add_employee(
            &env,
            &format!("e{n}@contoso.com"),
            &eid,
            &format!("e{n}@contoso.com"),
        ));
        env.put(&format!("staff/{}/{eid}.jpg", n % 4), &unique_jpeg(n));
    }
    let report = env.path("report.json");
    let out = env
        .run(&["backfill", "--report", report.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 100, "{}", text(&out));
    let queries = lookups(&env);
    eprintln!("100 employees resolved in {} lookups", queries.len());
    assert!(
        queries.len() <= 7,
        "100 employees took {} lookups",
        queries.len()
    );
    for q in &queries {
        assert!(q.raw_path.contains("%24select=") || q.raw_path.contains("$select="));
    }
    for (n, id) in ids.iter().enumerate() {
        let photo = env.emu.user_photo(id).expect("every employee has a photo");
        assert_eq!(photo.bytes, unique_jpeg(n as u32), "employee {n}");
    }
    // The report has one row per photo with what happened.
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rows.len(), 100, "{rows:?}");
    let quoted = rows
        .iter()
        .find(|r| r["target"] == "user(employeeId):O'Brien-7")
        .expect("a row for the quoted id");
    assert_eq!(quoted["action"], "upload");
    assert!(quoted["result"].as_str().unwrap().starts_with("uploaded"));
    assert!(quoted["request_id"].is_string(), "{quoted}");
    assert!(quoted["bytes_before"].as_u64().unwrap() > 0);

    // Forced: every photo again, every id from the cache.
    env.emu.clear_requests();
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 100);
    assert!(
        lookups(&env).is_empty(),
        "cached ids were looked up again: {}",
        lookups(&env).len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_no_match_and_multi_match_are_reported_and_the_rest_sync() {
    let env = Env::new().await;
    env.write_config(&staff_source("mail", ""));
    let obrien = add_employee(&env, "sean@contoso.com", "1", "Sean.O'Brien@Contoso.com");
    add_employee(&env, "twin1@contoso.com", "2", "shared@contoso.com");
    add_employee(&env, "twin2@contoso.com", "3", "shared@contoso.com");
    env.put("staff/sean.o'brien@contoso.com.jpg", &unique_jpeg(1));
    env.put("staff/shared@contoso.com.jpg", &unique_jpeg(2));
    env.put("staff/nobody@contoso.com.jpg", &unique_jpeg(3));
    let out = env.run(&["backfill"]).await;
    // The ambiguous one failed; the unknown one is parked (not a failure).
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(env.emu.user_photo(&obrien).unwrap().bytes, unique_jpeg(1));
    assert_eq!(uploads_ok(&env.emu), 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("2 users have mail shared@contoso.com: twin1@contoso.com, twin2@contoso.com"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("1 parked"), "{}", text(&out));

    let v = status_json(&env).await;
    assert_eq!(v["totals"]["parked"], 1, "{v}");
    let parked = &v["parked"][0];
    assert_eq!(parked["target"], "user(mail):nobody@contoso.com", "{v}");
    assert_eq!(
        parked["message"], "no user has mail nobody@contoso.com",
        "{v}"
    );
    let failed = &v["failures"][0];
    assert_eq!(failed["target"], "user(mail):shared@contoso.com", "{v}");
    assert_eq!(failed["class"], "permanent", "{v}");
    let text_status = env.run(&["status"]).await;
    let s = String::from_utf8_lossy(&text_status.stdout);
    assert!(s.contains("parked (user not found yet): 1"), "{s}");
    assert!(s.contains("no user has mail nobody@contoso.com"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mapping_file_with_bad_rows_applies_the_good_ones() {
    let env = Env::new().await;
    let alice = env.add_user("alice@contoso.com");
    let bob = env.add_user("bob@contoso.com");
    let carol = env.add_user("carol@contoso.com");
    // Excel in a German locale: BOM, semicolons, a quoted field.
    let csv = "\u{feff}Badge;UPN;Name\n\
               1001;alice@contoso.com;\"Doe; Alice\"\n\
               1002;bob@contoso.com;Bob\n\
               1003\n\
               1004;not a upn;Dee\n\
               1002;carol@contoso.com;dup\n\
               1005;carol@contoso.com;Carol\n";
    std::fs::write(env.path("hr-export.csv"), csv).unwrap();
    env.write_config(&staff_source(
        "upn",
        "mapping = \"hr-export.csv\"\ncolumn_file = \"Badge\"\ncolumn_target = \"UPN\"",
    ));
    env.put("staff/1001.jpg", &unique_jpeg(1));
    env.put("staff/1002.jpg", &unique_jpeg(2));
    env.put("staff/1005.JPG", &unique_jpeg(5));
    env.put("staff/1009.jpg", &unique_jpeg(9));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert_eq!(env.emu.user_photo(&alice).unwrap().bytes, unique_jpeg(1));
    assert_eq!(env.emu.user_photo(&carol).unwrap().bytes, unique_jpeg(5));
    // 1002 is mapped to two people: neither row applies.
    assert!(env.emu.user_photo(&bob).is_none(), "{all}");
    assert_eq!(uploads_ok(&env.emu), 2);
    for needle in [
        "hr-export.csv:4",
        "hr-export.csv:5",
        "hr-export.csv:6",
        "also on line 3",
        "`1009` has no row in the mapping file",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in {all}");
    }
    // `check` shows the same rows.
    let out = env.run(&["check"]).await;
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("3 rows apply; 3 left out") || s.contains("2 rows apply; 3 left out"),
        "{s}"
    );
    assert!(s.contains("line 4:"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_new_hire_is_uploaded_once_the_user_exists() {
    let env = Env::new().await;
    env.write_config(&format!(
        "{}\n[sync]\ndebounce = \"100ms\"\nparked_retry = \"1s\"\n",
        staff_source("employee_id", "")
    ));
    env.put("staff/004711.jpg", &unique_jpeg(4711));
    let daemon = spawn_daemon(&env).await;
    // Parked: looked up, not found, nothing uploaded; and looked up again when its retry came
    // due, still nothing uploaded.
    wait_until("a second lookup", Duration::from_secs(30), || {
        lookups(&env).len() >= 2
    })
    .await;
    assert!(upload_requests(&env.emu).is_empty());
    // HR's account provisioning catches up; nobody touches the file.
    let id = add_employee(&env, "newhire@contoso.com", "004711", "newhire@contoso.com");
    wait_until("the new hire's photo", Duration::from_secs(30), || {
        env.emu.user_photo(&id).is_some()
    })
    .await;
    assert_eq!(env.emu.user_photo(&id).unwrap().bytes, unique_jpeg(4711));
    assert!(lookups(&env).len() >= 2);
    daemon.stop().await.unwrap();
    let v = status_json(&env).await;
    assert_eq!(v["totals"]["parked"], 0, "{v}");
    assert_eq!(v["totals"]["synced"], 1, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_photo_changed_behind_our_back_and_repairs_it() {
    let env = Env::new().await;
    let alice = env.add_user("alice@contoso.com");
    env.add_user("bob@contoso.com");
    env.put("users/alice@contoso.com.jpg", &unique_jpeg(1));
    env.put("users/bob@contoso.com.jpg", &unique_jpeg(2));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = env.run(&["verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 synced photos checked: 2 as uploaded"));

    // Someone sets Alice's photo in Outlook.
    env.emu
        .set_user_photo(&alice, bytes::Bytes::from(unique_jpeg(99)));
    let out = env.run(&["verify"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("changed: user:alice@contoso.com"), "{s}");
    assert!(!s.contains("bob"), "{s}");
    assert_eq!(env.emu.user_photo(&alice).unwrap().bytes, unique_jpeg(99));

    env.emu.clear_requests();
    let out = env.run(&["verify", "--repair"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(env.emu.user_photo(&alice).unwrap().bytes, unique_jpeg(1));
    assert_eq!(
        uploads_ok(&env.emu),
        1,
        "only the drifted photo goes up again"
    );
    // Reads went to the photo metadata, not the bytes.
    assert!(env
        .emu
        .requests()
        .iter()
        .all(|r| r.kind != RequestKind::PhotoGet));
    let out = env.run(&["verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budgeted_backfill_goes_newest_first_and_resumes() {
    let env = Env::new().await;
    let mut ids = Vec::new();
    for n in 0..7u32 {
        let upn = format!("u{n}@contoso.com");
        ids.push(env.add_user(&upn));
        let p = env.put(&format!("users/{upn}.jpg"), &unique_jpeg(n));
        // u6 is the newest file, u0 the oldest.
        let t = std::time::SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000 + u64::from(n) * 60);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let uploaded = |env: &Env| -> Vec<usize> {
        (0..7)
            .filter(|n| env.emu.user_photo(&ids[*n]).is_some())
            .collect()
    };
    let out = env.run(&["backfill", "--max-uploads", "3"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("budget reached"),
        "{}",
        text(&out)
    );
    assert_eq!(uploaded(&env), [4, 5, 6]);
    let out = env.run(&["backfill", "--max-uploads", "3"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploaded(&env), [1, 2, 3, 4, 5, 6]);
    let out = env.run(&["backfill", "--max-uploads", "3"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploaded(&env), [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(uploads_ok(&env.emu), 7, "nothing was uploaded twice");
    // Nothing the budget left out was taken for deleted.
    let v = status_json(&env).await;
    assert_eq!(v["files"], 7, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_budget_stops_cleanly_and_the_next_run_finishes() {
    let env = Env::new().await;
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 1\nrequests_per_second = 5.0\nburst = 1\nrecord_etag = false\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    for n in 0..20u32 {
        let upn = format!("t{n}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &unique_jpeg(n));
    }
    let started = std::time::Instant::now();
    let out = env.run(&["backfill", "--max-duration", "1s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let first = uploads_ok(&env.emu);
    assert!(
        (2..20).contains(&first),
        "uploaded {first} in a 1 s budget at 5/s"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("budget reached (--max-duration)"));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        uploads_ok(&env.emu),
        20,
        "the second run uploads only the rest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn include_and_exclude_globs_and_a_csv_report() {
    let env = Env::new().await;
    env.add_user("a@contoso.com");
    env.add_user("b@contoso.com");
    env.add_user("c@contoso.com");
    env.write_config(&staff_source(
        "upn",
        "include = [\"current/**\"]\nexclude = [\"**/old-*/**\"]",
    ));
    env.put("staff/current/a@contoso.com.jpg", &unique_jpeg(1));
    env.put("staff/current/old-2019/b@contoso.com.jpg", &unique_jpeg(2));
    env.put("staff/archive/c@contoso.com.jpg", &unique_jpeg(3));
    let report = env.path("out/report.csv");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let out = env
        .run(&["backfill", "--report", report.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 1);
    assert!(env.emu.user_photo("a@contoso.com").is_some());
    let csv = std::fs::read_to_string(&report).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("path,target,action,result,bytes_before,bytes_after,error,request_id,crop")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(
        rows.iter()
            .filter(|r| r.contains(",skip,excluded,"))
            .count()
            == 2,
        "{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("user:a@contoso.com,upload,uploaded")),
        "{csv}"
    );
    // Unchanged on the next run, and the report says so.
    let out = env
        .run(&["backfill", "--report", report.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let csv = std::fs::read_to_string(&report).unwrap();
    assert!(csv.contains("user:a@contoso.com,none,unchanged"), "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_photo_named_by_employee_id_deletes_it_where_it_went() {
    let env = Env::new().await;
    env.write_config(&format!(
        "{}\n[sync]\non_delete = \"delete\"\n",
        staff_source("employee_id", "")
    ));
    let id = add_employee(&env, "leaver@contoso.com", "000042", "leaver@contoso.com");
    add_employee(&env, "stayer@contoso.com", "000043", "stayer@contoso.com");
    let gone = env.put("staff/000042.jpg", &unique_jpeg(42));
    env.put("staff/000043.jpg", &unique_jpeg(43));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(env.emu.user_photo(&id).is_some());
    std::fs::remove_file(gone).unwrap();
    env.emu.clear_requests();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(env.emu.user_photo(&id).is_none(), "{}", text(&out));
    let deletes: Vec<_> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::PhotoDelete)
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].raw_path.contains(&id), "{}", deletes[0].raw_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_follows_a_changed_mapping_file() {
    let env = Env::new().await;
    let alice = env.add_user("alice@contoso.com");
    let bob = env.add_user("bob@contoso.com");
    let csv = env.path("badges.csv");
    std::fs::write(&csv, "badge,upn\n1001,alice@contoso.com\n").unwrap();
    env.write_config(&format!(
        "{}\n[sync]\ndebounce = \"100ms\"\n",
        staff_source(
            "upn",
            "mapping = \"badges.csv\"\ncolumn_file = \"badge\"\ncolumn_target = \"upn\""
        )
    ));
    env.put("staff/1001.jpg", &unique_jpeg(1001));
    let daemon = spawn_daemon(&env).await;
    let wait_for = |id: String| {
        let emu = env.emu.clone();
        async move {
            wait_until(
                &format!("a photo for {id}"),
                Duration::from_secs(30),
                || emu.user_photo(&id).is_some(),
            )
            .await;
        }
    };
    wait_for(alice.clone()).await;
    // HR corrects the export: badge 1001 is Bob. The photo file itself does not change.
    std::fs::write(&csv, "badge,upn\n1001,bob@contoso.com\n").unwrap();
    wait_for(bob.clone()).await;
    assert_eq!(env.emu.user_photo(&bob).unwrap().bytes, unique_jpeg(1001));
    daemon.stop().await.unwrap();
}

/// `parked_max_age` counts from the first time a photo was parked, as the ledger recorded it:
/// a photo parked longer ago than that is given up, whichever pass looks for its user again.
#[tokio::test(flavor = "multi_thread")]
async fn a_photo_parked_longer_than_parked_max_age_is_given_up() {
    let env = Env::new().await;
    env.write_config(&format!(
        "{}\n[sync]\nparked_max_age = \"30days\"\n",
        staff_source("employee_id", "")
    ));
    env.put("staff/004711.jpg", &unique_jpeg(4711));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 parked"),
        "{}",
        text(&out)
    );

    // Parked 40 days ago, and still nobody has the employee id.
    let forty_days_ago = photosync::ledger::now_ms() - 40 * 24 * 3600 * 1000;
    let db = rusqlite::Connection::open(env.db()).unwrap();
    let changed = db
        .execute(
            "UPDATE targets SET parked_since = ?1 WHERE state = 'parked'",
            [forty_days_ago],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no_such_user: no user has employeeId 004711 (looked for since "),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("parked_max_age 30days is over)"),
        "{}",
        text(&out)
    );

    let out = env.run(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["totals"]["parked"], 0, "{v}");
    assert_eq!(v["failures"][0]["class"], "permanent", "{v}");
    assert!(upload_requests(&env.emu).is_empty());
}
