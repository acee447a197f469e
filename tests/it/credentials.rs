//! Every credential kind against the emulator, through the real binary: workload identity
//! federation (file and environment, rotation, refusals and their hints), managed identity
//! (VM endpoint, Arc challenge and its file checks, endpoint retries), PKCS#12 files, and the
//! token answers that must stop a run after one request. Keys, certificates and PKCS#12 files
//! are made here with the `openssl` command; none is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graph_emulator::{
    Config as EmuConfig, Fault, FaultRule, Federation, ManagedIdentity, Match, RequestKind,
};

use crate::helpers::{
    jpeg, spawn_daemon, text, wait_until, write_private, DaemonProcess, Env, CLIENT_ID, TENANT,
};

const ISSUER: &str = "https://oidc.prod-aks.azure.com/0b7e5c1a-9f6e-4a1f-8f7e-1c2d3e4f5a6b/";
const SUBJECT: &str = "system:serviceaccount:hr:photosync";
const AUDIENCE: &str = "api://AzureADTokenExchange";
const ARC_DIR: &str = "/var/opt/azcmagent/tokens";

fn token_requests(env: &Env) -> usize {
    env.emu
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Token)
        .count()
}

/// A platform-style token (signed with a key the emulator does not check, as Entra checks
/// the issuer's keys and the emulator does not have them).
fn platform_jwt(sub: &str, nonce: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": [AUDIENCE],
        "iat": now, "nbf": now, "exp": now + 3600, "jti": nonce,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"the platform's key"),
    )
    .unwrap()
}

async fn federated_env(propagation_refusals: u32) -> Env {
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        federation: Some(Federation {
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audience: AUDIENCE.into(),
            propagation_refusals,
        }),
        token_ttl: Duration::from_secs(2),
        ..EmuConfig::default()
    })
    .await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    env
}

/// Written the way a platform writes it: readable by others.
fn write_token(path: &Path, jwt: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, jwt).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn assertions(env: &Env) -> Vec<String> {
    env.emu
        .token_requests()
        .iter()
        .filter_map(|r| r.form.get("client_assertion").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn federated_token_file_is_read_again_for_every_token() {
    let env = federated_env(0).await;
    let first = platform_jwt(SUBJECT, "first");
    write_token(&env.path("token"), &first);
    env.write_config_with(
        "federated_token_file = \"token\"",
        "[upload]\nrequests_per_second = 100.0\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"1s\"\n",
    );
    let d = spawn_daemon(&env).await;
    wait_until("alice's photo", Duration::from_secs(30), || {
        env.emu.user_photo("alice@contoso.com").is_some()
    })
    .await;
    // The platform replaces the file; the token in hand stays valid for 2 s.
    let second = platform_jwt(SUBJECT, "second");
    write_token(&env.path("token"), &second);
    let rotated = Instant::now();
    wait_until("the first token to expire", Duration::from_secs(30), || {
        rotated.elapsed() > Duration::from_secs(3)
    })
    .await;
    env.add_user("bob@contoso.com");
    env.put("users/bob@contoso.com.jpg", &jpeg(2));
    wait_until("bob's photo", Duration::from_secs(30), || {
        env.emu.user_photo("bob@contoso.com").is_some()
    })
    .await;
    d.stop().await.unwrap();
    let sent = assertions(&env);
    assert!(sent.len() >= 2, "{} token requests", sent.len());
    assert_eq!(sent[0], first);
    assert_eq!(
        sent.last().unwrap(),
        &second,
        "the next token used the new file"
    );
    assert!(
        !env.emu
            .token_requests()
            .iter()
            .any(|r| r.form.contains_key("client_secret")),
        "no secret of our own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn federation_from_the_environment_with_a_propagating_credential() {
    // Refused twice with AADSTS70021, as right after the credential was added.
    let env = federated_env(2).await;
    let jwt = platform_jwt(SUBJECT, "env");
    write_token(&env.path("projected-token"), &jwt);
    // No tenant_id or client_id: both come from the environment.
    let url = env.emu.url();
    let text_cfg = std::fs::read_to_string(&env.config).unwrap();
    let text_cfg = text_cfg
        .replace(&format!("tenant_id = \"{TENANT}\"\n"), "")
        .replace(&format!("client_id = \"{CLIENT_ID}\"\n"), "")
        .replace(
            "client_secret_file = \"secret\"",
            "credential = \"environment\"",
        )
        .replace(
            &format!("login_url = \"{url}\"\n"),
            "login_url = \"https://login.invalid\"\n",
        );
    std::fs::write(&env.config, text_cfg).unwrap();
    let token_file = env.path("projected-token");
    let out = env
        .run_env(
            &["-vv", "backfill"],
            &[
                ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_AUTHORITY_HOST", &url),
                ("RUST_LOG", "trace"),
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert_eq!(
        token_requests(&env),
        3,
        "two refusals while propagating, then the token"
    );
    assert!(
        !text(&out).contains(&jwt),
        "the token file's content was logged"
    );
    assert!(!text(&out).contains(jwt.split('.').nth(1).unwrap()));
    let out = env
        .run_env(
            &["check"],
            &[
                ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_AUTHORITY_HOST", &url),
            ],
        )
        .await;
    let all = text(&out);
    assert!(
        all.contains("ok    credentials (workload identity federation): federated token file"),
        "{all}"
    );
    assert!(
        all.contains(&format!("issuer {ISSUER}, subject {SUBJECT}"))
            && all.contains(", expires 20"),
        "{all}"
    );
    assert!(all.contains("roles: ProfilePhoto.ReadWrite.All"), "{all}");
    assert!(!all.contains(&jwt), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_federated_refusal_names_what_the_token_says() {
    let env = federated_env(0).await;
    let jwt = platform_jwt("system:serviceaccount:hr:wrong", "x");
    write_token(&env.path("token"), &jwt);
    env.write_config_with(
        "federated_token_file = \"token\"",
        "[upload]\nrequests_per_second = 100.0\n",
        "",
        "",
    );
    let out = env.run(&["backfill"]).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("AADSTS700213"), "{all}");
    assert!(
        all.contains("subject system:serviceaccount:hr:wrong"),
        "{all}"
    );
    assert!(all.contains(ISSUER) && all.contains(AUDIENCE), "{all}");
    assert!(!all.contains(&jwt), "{all}");
    assert_eq!(token_requests(&env), 1, "{all}");
}

async fn managed_env(mi: ManagedIdentity) -> Env {
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        managed_identity: Some(mi),
        ..EmuConfig::default()
    })
    .await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    env
}

/// A config naming `credential` and neither tenant nor client id.
fn managed_config(env: &Env, credential: &str) {
    env.write_config_with(
        credential,
        "[upload]\nrequests_per_second = 100.0\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let cfg = cfg
        .replace(&format!("tenant_id = \"{TENANT}\"\n"), "")
        .replace(&format!("client_id = \"{CLIENT_ID}\"\n"), "");
    std::fs::write(&env.config, cfg).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_identity_on_a_vm_waits_out_an_identity_just_assigned() {
    let env = managed_env(ManagedIdentity {
        user_assigned: vec!["5d8a0c4e-1111-2222-3333-444455556666".into()],
        ..ManagedIdentity::default()
    })
    .await;
    let endpoint = format!("{}/metadata/identity/oauth2/token", env.emu.url());
    managed_config(
        &env,
        &format!("managed_identity_client_id = \"5d8a0c4e-1111-2222-3333-444455556666\"\nmanaged_identity_endpoint = \"{endpoint}\""),
    );
    for status in [404, 410, 503] {
        env.emu.push_fault(FaultRule::status(
            Match::Kind(RequestKind::Token),
            status,
            "NotReady",
            1,
        ));
    }
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert_eq!(
        token_requests(&env),
        4,
        "three not-ready answers, then the token"
    );
    let out = env.run(&["check"]).await;
    let all = text(&out);
    assert!(all.contains("ok    credentials (managed identity): managed identity (user-assigned, client_id 5d8a0c4e-1111-2222-3333-444455556666)"), "{all}");
    assert!(all.contains("roles: ProfilePhoto.ReadWrite.All"), "{all}");

    // An identity the endpoint does not know: its answer, once (400 is not retried).
    managed_config(
        &env,
        &format!(
            "managed_identity_object_id = \"nobody\"\nmanaged_identity_endpoint = \"{endpoint}\""
        ),
    );
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("Identity not found"), "{}", text(&out));
}

/// The Arc agent's folder is fixed; tests need root to make it (CI runs as root).
fn arc_dir() -> Option<PathBuf> {
    match std::fs::create_dir_all(ARC_DIR) {
        Ok(()) => Some(PathBuf::from(ARC_DIR)),
        Err(e) if std::env::var_os("PHOTOSYNC_REQUIRE_MOUNT_TESTS").is_none() => {
            eprintln!("skipped: cannot create {ARC_DIR}: {e}");
            None
        }
        Err(e) => panic!("cannot create {ARC_DIR}: {e}"),
    }
}

async fn arc_run(env: &Env) -> std::process::Output {
    managed_config(env, "managed_identity = true");
    let endpoint = format!("{}/metadata/identity/oauth2/token", env.emu.url());
    env.run_env(
        &["-vv", "backfill", "--force"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IMDS_ENDPOINT", &env.emu.url()),
            ("RUST_LOG", "trace"),
        ],
    )
    .await
}

fn challenged_requests(env: &Env) -> usize {
    env.emu
        .token_requests()
        .iter()
        .filter(|r| r.headers.contains_key("authorization"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_identity_on_arc_answers_the_challenge() {
    let Some(dir) = arc_dir() else { return };
    let env = managed_env(ManagedIdentity {
        arc_key_dir: Some(dir),
        ..ManagedIdentity::default()
    })
    .await;
    let out = arc_run(&env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert_eq!(challenged_requests(&env), 1);
    let sent = env.emu.token_requests();
    let key = sent
        .iter()
        .find_map(|r| r.headers.get("authorization"))
        .unwrap()
        .trim_start_matches("Basic ")
        .to_owned();
    assert!(!text(&out).contains(&key), "the Arc key was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn arc_challenge_files_that_are_not_the_agents_are_not_read() {
    let Some(dir) = arc_dir() else { return };
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join("stolen.key");
    std::fs::write(&outside, "not for photosync").unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let link = dir.join(format!("link-{tag}.key"));
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let txt = dir.join(format!("key-{tag}.txt"));
    std::fs::write(&txt, "x").unwrap();
    let big = dir.join(format!("big-{tag}.key"));
    std::fs::write(&big, vec![b'k'; 4097]).unwrap();
    for (realm, says) in [
        (outside.clone(), "not directly in the agent's token folder"),
        (link.clone(), "symbolic link"),
        (txt.clone(), "does not end in .key"),
        (big.clone(), "larger than 4,096 bytes"),
    ] {
        let env = managed_env(ManagedIdentity {
            arc_key_dir: Some(elsewhere.path().to_owned()),
            arc_realm: Some(realm.clone()),
            ..ManagedIdentity::default()
        })
        .await;
        let out = arc_run(&env).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(3), "{realm:?}: {all}");
        assert!(
            all.contains(says) && all.contains("nothing was sent"),
            "{realm:?}: {all}"
        );
        assert_eq!(challenged_requests(&env), 0, "{realm:?}: a key was sent");
        assert!(!all.contains("not for photosync"), "{all}");
    }
    for p in [link, txt, big] {
        std::fs::remove_file(p).unwrap();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a leaf certificate signed by it (valid `days`, negative: already expired) and the
/// leaf's key, in `dir` as ca.pem, leaf.pem, leaf.key.
fn make_certificates(dir: &Path, days: i32) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=photosync",
        ],
        dir,
    );
    if days < 0 {
        // `openssl ca` is the one that takes dates in the past (OpenSSL 3.0's x509 does not).
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        openssl(
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                "leaf.csr",
                "-out",
                "leaf.pem",
                "-notext",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
            ],
            dir,
        );
    } else {
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-out",
                "leaf.pem",
                "-days",
                &days.to_string(),
            ],
            dir,
        );
    }
}

async fn pfx_env(days: i32) -> Env {
    pfx_env_with(days, Duration::from_secs(3600)).await
}

async fn pfx_env_with(days: i32, token_ttl: Duration) -> Env {
    let made = tempfile::tempdir().unwrap();
    make_certificates(made.path(), days);
    let leaf = std::fs::read_to_string(made.path().join("leaf.pem")).unwrap();
    let env2 = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        certificate_pem: Some(leaf),
        token_ttl,
        ..EmuConfig::default()
    })
    .await;
    for f in ["ca.pem", "leaf.pem", "leaf.key"] {
        std::fs::copy(made.path().join(f), env2.path(f)).unwrap();
    }
    env2.add_user("alice@contoso.com");
    env2.put("users/alice@contoso.com.jpg", &jpeg(1));
    env2
}

fn pfx_config(env: &Env, password: Option<&str>) {
    let pw = password.map_or(String::new(), |_| {
        "\ncertificate_password_file = \"app.pass\"".to_owned()
    });
    env.write_config_with(
        &format!("certificate_file = \"app.pfx\"{pw}"),
        "[upload]\nrequests_per_second = 100.0\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
}

/// `ca.pem` is given first: the file's first certificate is the CA's.
fn export_pfx(env: &Env, pass: &str, extra: &[&str]) {
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(env.path("ca.pem")).unwrap(),
        std::fs::read_to_string(env.path("leaf.pem")).unwrap()
    );
    std::fs::write(env.path("chain.pem"), chain).unwrap();
    let passout = format!("pass:{pass}");
    let mut args = vec![
        "pkcs12",
        "-export",
        "-in",
        "chain.pem",
        "-inkey",
        "leaf.key",
        "-out",
        "app.pfx",
        "-passout",
        &passout,
    ];
    args.extend_from_slice(extra);
    openssl(&args, env.dir.path());
    let bytes = std::fs::read(env.path("app.pfx")).unwrap();
    write_private(&env.path("app.pfx"), &bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn pkcs12_files_with_and_without_a_password() {
    let env = pfx_env(30).await;
    let password = "correct horse battery staple";
    // OpenSSL 3's default (AES-256-CBC, PBKDF2), with the password file's newline.
    export_pfx(&env, password, &[]);
    write_private(&env.path("app.pass"), format!("{password}\n").as_bytes());
    pfx_config(&env, Some(password));
    let out = env
        .run_env(&["-vv", "backfill"], &[("RUST_LOG", "trace")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert!(!text(&out).contains(password));

    let out = env.run(&["check"]).await;
    let all = text(&out);
    assert!(all.contains("credentials (certificate)"), "{all}");
    assert!(all.contains("PKCS#12") && all.contains("expires"), "{all}");
    assert!(all.contains("roles: ProfilePhoto.ReadWrite.All"), "{all}");
    assert!(!all.contains(password), "{all}");

    // The legacy encryption (3DES) and no password.
    export_pfx(
        &env,
        "",
        &[
            "-certpbe",
            "PBE-SHA1-3DES",
            "-keypbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    );
    pfx_config(&env, None);
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A wrong password: refused before any request.
    export_pfx(&env, password, &[]);
    write_private(&env.path("app.pass"), b"wrong password\n");
    pfx_config(&env, Some("x"));
    env.emu.reset_stats();
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("wrong password"), "{}", text(&out));
    assert!(!text(&out).contains("wrong password\n\n"));
    assert_eq!(token_requests(&env), 0);

    // No private key in the file.
    openssl(
        &[
            "pkcs12", "-export", "-nokeys", "-in", "leaf.pem", "-out", "app.pfx", "-passout",
            "pass:",
        ],
        env.dir.path(),
    );
    pfx_config(&env, None);
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no private key"), "{}", text(&out));
}

/// A PKCS#12 file whose first certificate bag is the CA's (the `openssl` command always puts
/// the key's certificate first; other tools do not).
fn export_ca_first_pfx(env: &Env, pass: &str) {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let der = |f: &str| {
        pem::parse(std::fs::read(env.path(f)).unwrap())
            .unwrap()
            .into_contents()
    };
    let leaf = Certificate::from_der(&der("leaf.pem")).unwrap();
    let ca = Certificate::from_der(&der("ca.pem")).unwrap();
    let key = PrivateKey::from_der(&der("leaf.key")).unwrap();
    let mut store = KeyStore::new();
    store.add_entry("a-ca", KeyStoreEntry::Certificate(ca));
    store.add_entry(
        "photosync",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(b"leaf-key-id".to_vec(), key, [leaf])),
    );
    let bytes = store.writer(pass).write().unwrap();
    write_private(&env.path("app.pfx"), &bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_used_is_the_one_matching_the_key_not_the_first() {
    let env = pfx_env(30).await;
    export_ca_first_pfx(&env, "pw");
    let bags = p12_keystore::Pkcs12Archive::from_pkcs12(
        &std::fs::read(env.path("app.pfx")).unwrap(),
        "pw",
    )
    .unwrap();
    assert_eq!(
        bags.certs[0].cert.subject(),
        "CN=Test CA",
        "the CA's certificate comes first"
    );
    write_private(&env.path("app.pass"), b"pw");
    pfx_config(&env, Some("pw"));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );

    // The same in a PEM file that lists the CA first.
    let pem_text = ["ca.pem", "leaf.pem", "leaf.key"]
        .map(|f| std::fs::read_to_string(env.path(f)).unwrap())
        .concat();
    write_private(&env.path("app.pem"), pem_text.as_bytes());
    env.write_config_with(
        "certificate_file = \"app.pem\"",
        "",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_before_any_request() {
    let env = pfx_env(-1).await;
    export_pfx(&env, "", &[]);
    pfx_config(&env, None);
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expired on"), "{}", text(&out));
    assert_eq!(token_requests(&env), 0);
}

/// Each of these was retried as transient for every photo (160 token requests for 20
/// photos), and an empty token was even sent to Graph.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_token_answer_costs_one_request_and_stops_the_run() {
    let body = |status: u16, ct: &str, body: &str| Fault::Body {
        status,
        content_type: ct.into(),
        body: body.into(),
    };
    let cases = [
        (
            "no access_token",
            body(
                200,
                "application/json",
                r#"{"token_type":"Bearer","expires_in":3599}"#,
            ),
            "without an access_token",
        ),
        (
            "empty token",
            body(
                200,
                "application/json",
                r#"{"token_type":"Bearer","expires_in":3599,"access_token":""}"#,
            ),
            "access_token is empty",
        ),
        (
            "HTML",
            body(200, "text/html", "<html><body>Proxy login</body></html>"),
            "HTML page",
        ),
        (
            "refused secret",
            body(
                401,
                "application/json",
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
            ),
            "AADSTS7000215",
        ),
    ];
    for (what, fault, says) in cases {
        let env = Env::new().await;
        for i in 0..20 {
            let upn = format!("user{i}@contoso.com");
            env.add_user(&upn);
            env.put(&format!("users/{upn}.jpg"), &jpeg(i));
        }
        env.emu
            .push_fault(FaultRule::new(Match::Kind(RequestKind::Token), fault, 100));
        let out = env.run(&["backfill"]).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {all}");
        assert_eq!(token_requests(&env), 1, "{what}: {all}");
        assert!(all.contains(says), "{what}: {all}");
        assert!(!all.contains("Proxy login"), "{what}: {all}");
        assert!(
            all.matches("fatal error; stopping").count() <= 1,
            "{what}: {all}"
        );
        let bearer_empty = env
            .emu
            .requests()
            .iter()
            .any(|r| r.kind != RequestKind::Token && !r.authorization);
        assert!(!bearer_empty, "{what}: a Graph request without a token");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_requests_carry_a_client_request_id() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    let out = env
        .run_env(&["-vv", "backfill"], &[("RUST_LOG", "photosync=debug")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sent = env.emu.token_requests();
    let id = sent[0]
        .headers
        .get("client-request-id")
        .expect("client-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert!(
        text(&out).contains(id.as_str()),
        "the id is logged: {}",
        text(&out)
    );
}

/// A certificate rotated on disk before Entra knows it: the daemon keeps the token it has
/// (and says why) until that expires, then stops on the refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_entra_refuses_keeps_the_current_token_until_it_expires() {
    let ttl = Duration::from_secs(20);
    let env = pfx_env_with(30, ttl).await;
    let pem_of = |cert: &str, key: &str| {
        [cert, key]
            .map(|f| std::fs::read_to_string(env.path(f)).unwrap())
            .concat()
    };
    write_private(
        &env.path("app.pem"),
        pem_of("leaf.pem", "leaf.key").as_bytes(),
    );
    env.write_config_with(
        "certificate_file = \"app.pem\"",
        "[upload]\nrequests_per_second = 100.0\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"1s\"\n",
    );
    let d = DaemonProcess::start(&env).await;
    let issued = Instant::now();
    wait_until("alice's photo", Duration::from_secs(30), || {
        env.emu.user_photo("alice@contoso.com").is_some()
    })
    .await;
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "new.pem",
            "-days",
            "30",
            "-subj",
            "/CN=photosync next",
        ],
        env.dir.path(),
    );
    write_private(
        &env.path("app.pem"),
        pem_of("new.pem", "new.key").as_bytes(),
    );
    // Past the refresh point (three quarters of the life), well before expiry.
    wait_until("the refresh point", ttl, || {
        issued.elapsed() > ttl * 3 / 4 + Duration::from_millis(200)
    })
    .await;
    env.add_user("bob@contoso.com");
    env.put("users/bob@contoso.com.jpg", &jpeg(2));
    wait_until("bob's photo", Duration::from_secs(30), || {
        env.emu.user_photo("bob@contoso.com").is_some()
    })
    .await;
    d.wait_log("using the current one until it expires").await;
    assert!(d.log().contains("AADSTS700027"), "{}", d.log());
    wait_until("the token's expiry", ttl * 2, || {
        issued.elapsed() > ttl + Duration::from_secs(1)
    })
    .await;
    env.add_user("carol@contoso.com");
    env.put("users/carol@contoso.com.jpg", &jpeg(3));
    let (code, log) = d.exit().await;
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("AADSTS700027"), "{log}");
    assert!(env.emu.user_photo("carol@contoso.com").is_none());
}

/// The Python with MSAL 1.39 that `.ci/run` installs; `None` (skipped) outside CI without it.
fn msal_python() -> Option<PathBuf> {
    let python = std::env::var_os("PHOTOSYNC_MSAL_PYTHON").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/msal-venv/bin/python"
            ))
        },
        PathBuf::from,
    );
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: .ci/run installs MSAL there",
        python.display()
    );
    eprintln!("skipped: no MSAL for Python at {}", python.display());
    None
}

fn jwt_part(jwt: &str, n: usize) -> serde_json::Map<String, serde_json::Value> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwt.split('.').nth(n).unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Compares photosync's token request with MSAL's for one credential: the same form fields
/// (and values, but for the assertion), the same assertion header, the same claims.
fn compare_with_msal(
    ours: &graph_emulator::TokenRequest,
    msal: &graph_emulator::TokenRequest,
    token_url: &str,
    tenant: &str,
) {
    let keys = |r: &graph_emulator::TokenRequest| r.form.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(ours), keys(msal), "form fields");
    for (k, v) in &ours.form {
        if k != "client_assertion" {
            assert_eq!(Some(v), msal.form.get(k), "form field {k}");
        }
    }
    for r in [ours, msal] {
        assert!(
            r.headers.contains_key("client-request-id"),
            "{:?}",
            r.headers.keys()
        );
    }
    let (Some(a), Some(b)) = (
        ours.form.get("client_assertion"),
        msal.form.get("client_assertion"),
    ) else {
        return;
    };
    let mut msal_header = jwt_part(b, 0);
    // MSAL adds the chain (for subject-name/issuer authentication) when it is given the
    // certificate; Entra does not need it for a registered certificate.
    msal_header.remove("x5c");
    // MSAL pads its thumbprints (`…=`); both forms are base64url and Entra takes either.
    for k in ["x5t", "x5t#S256"] {
        if let Some(serde_json::Value::String(t)) = msal_header.get_mut(k) {
            *t = t.trim_end_matches('=').to_owned();
        }
    }
    assert_eq!(jwt_part(a, 0), msal_header, "assertion header");
    let (mut ca, cb) = (jwt_part(a, 1), jwt_part(b, 1));
    assert!(
        ca.remove("nbf").is_some(),
        "photosync states nbf as well as iat"
    );
    let claim_keys =
        |c: &serde_json::Map<String, serde_json::Value>| c.keys().cloned().collect::<Vec<_>>();
    assert_eq!(claim_keys(&ca), claim_keys(&cb), "claims");
    for c in ["iss", "sub"] {
        assert_eq!(ca[c], cb[c], "{c}");
        assert_eq!(ca[c], CLIENT_ID);
    }
    assert_eq!(ca["aud"], token_url);
    assert_eq!(
        cb["aud"],
        format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
    );
    for c in [&ca, &cb] {
        let life = c["exp"].as_f64().unwrap() - c["iat"].as_f64().unwrap();
        assert!(life > 0.0 && life <= 600.0, "lifetime {life}");
        assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
    }
    assert_ne!(ca["jti"], cb["jti"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_requests_match_msal_for_python() {
    let Some(python) = msal_python() else { return };
    let made = tempfile::tempdir().unwrap();
    make_certificates(made.path(), 30);
    let read = |f: &str| std::fs::read_to_string(made.path().join(f)).unwrap();
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(crate::helpers::SECRET.into()),
        certificate_pem: Some(read("leaf.pem")),
        ..EmuConfig::default()
    })
    .await;
    write_private(
        &env.path("app.pem"),
        format!("{}{}", read("leaf.pem"), read("leaf.key")).as_bytes(),
    );
    let url = env.emu.url();
    let token_url = format!("{url}/{TENANT}/oauth2/v2.0/token");
    for (credential, alg) in [
        ("client_secret_file = \"secret\"", None),
        (
            "certificate_file = \"app.pem\"\nassertion = \"rs256\"",
            Some("rs256"),
        ),
        (
            "certificate_file = \"app.pem\"\nassertion = \"ps256\"",
            Some("ps256"),
        ),
    ] {
        env.emu.reset_stats();
        env.write_config_with(credential, "", "", "");
        let out = env.run(&["check"]).await;
        assert!(text(&out).contains("ok    token"), "{}", text(&out));
        let mut args = serde_json::json!({
            "url": url, "tenant": TENANT, "client_id": CLIENT_ID, "scope": format!("{url}/.default"),
        });
        match alg {
            None => args["secret"] = crate::helpers::SECRET.into(),
            Some(alg) => {
                args["key_pem"] = read("leaf.key").into();
                args["cert_pem"] = read("leaf.pem").into();
                args["alg"] = alg.into();
            }
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/msal/token_request.py");
        let py = tokio::process::Command::new(&python)
            .arg(script)
            .arg(args.to_string())
            .output()
            .await
            .unwrap();
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        let sent: Vec<_> = env
            .emu
            .token_requests()
            .into_iter()
            .filter(|r| r.path.contains("/oauth2/v2.0/token"))
            .collect();
        assert_eq!(sent.len(), 2, "{alg:?}: {sent:?}");
        compare_with_msal(&sent[0], &sent[1], &token_url, TENANT);
    }
}

/// Passing failures of the token endpoint are retried once for all workers, with one
/// backoff: 20 photos and 4 workers cost three token requests, not one per photo.
#[tokio::test(flavor = "multi_thread")]
async fn a_passing_token_endpoint_outage_is_retried_once_for_all_workers() {
    let env = Env::new().await;
    for i in 0..20 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    env.emu.push_fault(FaultRule::status(
        Match::Kind(RequestKind::Token),
        503,
        "temporarily_unavailable",
        1,
    ));
    env.emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::Token),
        Fault::Reset,
        1,
    ));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(token_requests(&env), 3, "{}", text(&out));
    assert_eq!(crate::helpers::uploads_ok(&env.emu), 20);
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// What every command that prints or writes shows, with trace logs on.
async fn everything_printed_and_written(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut seen = Vec::new();
    let trace = [("RUST_LOG", "trace")];
    let report = env.path("report.csv");
    let report_arg = report.to_str().unwrap().to_owned();
    for args in [
        &["-vv", "backfill", "--force", "--report", &report_arg][..],
        &["-vv", "status"],
        &["-vv", "status", "--json"],
        &["-vv", "check"],
        &["-vv", "verify"],
    ] {
        let out = env.run_env(args, &trace).await;
        seen.push((format!("{args:?}"), [out.stdout, out.stderr].concat()));
    }
    for f in ["state/photosync.db", "state/photosync.db-wal", "report.csv"] {
        if let Ok(bytes) = std::fs::read(env.path(f)) {
            seen.push((f.to_owned(), bytes));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_of_any_kind_reaches_logs_ledger_status_check_or_reports() {
    // Federation: the token file's content, and its signature alone.
    let env = federated_env(0).await;
    let jwt = platform_jwt(SUBJECT, "leak");
    write_token(&env.path("token"), &jwt);
    env.write_config_with(
        "federated_token_file = \"token\"",
        "",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    let signature = jwt.rsplit('.').next().unwrap().to_owned();
    let seen = everything_printed_and_written(&env).await;
    assert!(
        seen.iter().any(|(_, b)| contains(b, "uploaded")),
        "logs were written"
    );
    for (what, bytes) in &seen {
        assert!(
            !contains(bytes, &signature),
            "the federated token in {what}"
        );
    }

    // PKCS#12: the password, the private key, the assertion.
    let env = pfx_env(30).await;
    let password = "pfx-password-never-printed";
    export_pfx(&env, password, &[]);
    write_private(&env.path("app.pass"), password.as_bytes());
    pfx_config(&env, Some(password));
    let key = std::fs::read_to_string(env.path("leaf.key")).unwrap();
    let key_line = key.lines().nth(3).unwrap().to_owned();
    let seen = everything_printed_and_written(&env).await;
    let assertion = env
        .emu
        .token_requests()
        .iter()
        .find_map(|r| r.form.get("client_assertion").cloned())
        .unwrap();
    let assertion_signature = assertion.rsplit('.').next().unwrap().to_owned();
    for (what, bytes) in &seen {
        assert!(!contains(bytes, password), "the password in {what}");
        assert!(!contains(bytes, &key_line), "the private key in {what}");
        assert!(
            !contains(bytes, &assertion_signature),
            "the assertion in {what}"
        );
    }

    // Managed identity: the issued access token.
    let env = managed_env(ManagedIdentity::default()).await;
    let endpoint = format!("{}/metadata/identity/oauth2/token", env.emu.url());
    managed_config(
        &env,
        &format!("managed_identity = true\nmanaged_identity_endpoint = \"{endpoint}\""),
    );
    let seen = everything_printed_and_written(&env).await;
    assert!(env.emu.tokens_issued() > 0);
    for (what, bytes) in &seen {
        // Every issued token is an HS256 JWT whose header is this; none may be printed.
        assert!(
            !contains(bytes, "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"),
            "an access token in {what}"
        );
        assert!(
            !contains(bytes, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"),
            "an access token in {what}"
        );
    }
}
