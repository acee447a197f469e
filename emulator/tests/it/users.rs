//! User lookups by `$filter`, `$batch`, and the photo update setting.

use serde_json::{json, Value};

use crate::helpers::*;

async fn query(
    emu: &graph_emulator::Emulator,
    t: &str,
    params: &[(&str, &str)],
    eventual: bool,
) -> (u16, Value) {
    let mut req = client()
        .get(format!("{}/v1.0/users", emu.url()))
        .bearer_auth(t)
        .query(params);
    if eventual {
        req = req.header("ConsistencyLevel", "eventual");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn ids(v: &Value) -> Vec<String> {
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn filter_eq_and_in() {
    let emu = start().await;
    let t = token(&emu).await;
    let select = ("$select", "id,userPrincipalName,mail,employeeId");

    let (status, v) = query(
        &emu,
        &t,
        &[("$filter", "employeeId eq '004711'"), select],
        false,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ids(&v), vec![JANE_ID]);
    assert_eq!(v["value"][0]["employeeId"], "004711");
    assert_eq!(v["value"][0]["mail"], "Jane.Doe@contoso.com");
    assert_eq!(v["value"][0]["userPrincipalName"], JANE);

    let (_, v) = query(
        &emu,
        &t,
        &[("$filter", "employeeId eq 'O''Brien'"), select],
        false,
    )
    .await;
    assert_eq!(ids(&v), vec![OBRIEN_ID]);

    let (_, v) = query(
        &emu,
        &t,
        &[("$filter", "mail eq 'JANE.DOE@contoso.com'"), select],
        false,
    )
    .await;
    assert_eq!(ids(&v), vec![JANE_ID]);

    let (_, v) = query(
        &emu,
        &t,
        &[("$filter", "userPrincipalName in ('BOB_fabrikam.com#EXT#@contoso.onmicrosoft.com', 'jane@contoso.onmicrosoft.com', 'none@x.com')"), select],
        false,
    )
    .await;
    assert_eq!(ids(&v), vec![JANE_ID, GUEST_ID]);

    let (_, v) = query(
        &emu,
        &t,
        &[
            ("$filter", "employeeId in ('004712','O''Brien')"),
            ("$count", "true"),
        ],
        true,
    )
    .await;
    assert_eq!(ids(&v), vec![GUEST_ID, OBRIEN_ID]);
    assert_eq!(v["@odata.count"], 2);
    assert!(v["value"][0].get("employeeId").is_none(), "not selected");

    let (status, _) = query(
        &emu,
        &t,
        &[("$filter", "employeeId eq '1'"), ("$count", "true")],
        false,
    )
    .await;
    assert_eq!(status, 400);

    let many: Vec<String> = (0..16).map(|i| format!("'{i}'")).collect();
    let f = format!("employeeId in ({})", many.join(","));
    let (status, v) = query(&emu, &t, &[("$filter", f.as_str())], false).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "BadRequest");

    let (status, v) = query(
        &emu,
        &t,
        &[("$filter", "employeeId eq 'unterminated")],
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "BadRequest");

    let (status, v) = query(&emu, &t, &[("$top", "1")], false).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&v), vec![JANE_ID]);
}

#[tokio::test]
async fn batch_of_lookups() {
    let emu = start().await;
    let t = token(&emu).await;
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/users?$filter=employeeId eq '004711'&$select=id"},
        {"id": "2", "method": "GET", "url": format!("/users/{GUEST_ID}/photo")},
        {"id": "3", "method": "GET", "url": "/users/nobody@x.com"},
    ]});
    let resp = client()
        .post(format!("{}/v1.0/$batch", emu.url()))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let r = v["responses"].as_array().unwrap();
    assert_eq!(r[0]["status"], 200);
    assert_eq!(r[0]["body"]["value"][0]["id"], JANE_ID);
    assert_eq!(r[1]["status"], 200);
    assert_eq!(r[1]["body"]["id"], "1x1");
    assert_eq!(r[2]["status"], 404);
}

#[tokio::test]
async fn photo_update_settings() {
    let emu = start().await;
    let t = token(&emu).await;
    let v: Value = get(&emu, &t, "/beta/admin/people/photoUpdateSettings")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["source"], "cloud");
    assert_eq!(v["allowedRoles"], json!([]));
    emu.set_photo_update_source("onPremises");
    let v: Value = get(&emu, &t, "/beta/admin/people/photoUpdateSettings")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["source"], "onPremises");
}
