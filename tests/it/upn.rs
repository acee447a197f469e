//! UPNs reach Graph as the file names them (NFC): Graph compares UPNs case-insensitively
//! itself, and a lower-cased UPN may name nobody (`İ` lower-cases to two code points).
//! photosync folds case only for its own comparisons.

use crate::helpers::{text, unique_jpeg, upload_requests, Env};

#[tokio::test(flavor = "multi_thread")]
async fn a_upn_with_a_dotted_capital_i_reaches_graph_as_written() {
    let env = Env::new().await;
    let upn = "\u{130}lker.Y\u{131}lmaz@Contoso.com";
    env.add_user(upn);
    // Named in decomposed form (I + combining dot above), as some file systems hand it over.
    env.put(
        "users/I\u{307}lker.Y\u{131}lmaz@Contoso.com.jpg",
        &unique_jpeg(1),
    );
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let puts = upload_requests(&env.emu);
    assert_eq!(puts.len(), 1, "{puts:?}");
    let path = percent_encoding::percent_decode_str(&puts[0].raw_path)
        .decode_utf8()
        .unwrap()
        .into_owned();
    assert!(
        path.contains(&format!("/users/{upn}/photo")),
        "sent to {path} ({})",
        puts[0].raw_path
    );
    assert!(env
        .emu
        .user_photo(upn)
        .is_some_and(|p| p.bytes == unique_jpeg(1)));

    // The ledger knows it by its folded key: the next run finds it unchanged.
    let again = env.run(&["backfill"]).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(upload_requests(&env.emu).len(), 1);
}
