//! Test scaffolding: an emulator on 127.0.0.1:0, a temp tree, a config file, and a way to run
//! the binary against them. Not every test module uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use graph_emulator::{Config as EmuConfig, Emulator, User};

pub const SECRET: &str = "s3cr3t-Value~with.special_chars-0123456789";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const TENANT: &str = "contoso.onmicrosoft.com";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub emu: Emulator,
    pub config: PathBuf,
}

impl Env {
    /// An emulator that accepts [`SECRET`], an empty tree with `users/`, `groups/` and
    /// `contacts/`, and a config in passthrough mode with a generous rate.
    pub async fn new() -> Env {
        Self::with_emulator(EmuConfig {
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(SECRET.into()),
            ..EmuConfig::default()
        })
        .await
    }

    pub async fn with_emulator(cfg: EmuConfig) -> Env {
        let dir = tempfile::tempdir().unwrap();
        for d in ["users", "groups", "contacts"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        write_private(&dir.path().join("secret"), format!("{SECRET}\n").as_bytes());
        let emu = Emulator::start(cfg).await.unwrap();
        let env = Env {
            config: dir.path().join("config.toml"),
            dir,
            emu,
        };
        env.write_config("");
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn db(&self) -> PathBuf {
        self.path("state/photosync.db")
    }

    /// Writes the config; `extra` is appended (later keys in a table override nothing, so pass
    /// whole tables that the base does not have, or use [`Env::write_config_with`]).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(
            "client_secret_file = \"secret\"",
            "[upload]\nworkers = 4\nrequests_per_second = 200.0\nburst = 50\nmax_attempts = 4\nrequest_timeout = \"10s\"\n",
            "[image]\nmode = \"passthrough\"\n",
            extra,
        );
    }

    pub fn write_config_with(&self, credential: &str, upload: &str, image: &str, extra: &str) {
        let url = self.emu.url();
        let text = format!(
            r#"[auth]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
{credential}

[cloud]
login_url = "{url}"
graph_url = "{url}"

[state]
database = "state/photosync.db"

{upload}
{image}
[[source]]
root = "users"
target = "user"
key = "upn"

[[source]]
root = "groups"
target = "group"
key = "id"

[[source]]
root = "contacts"
target = "contact"
key = "id"
{extra}"#
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Writes a file under the tree, creating folders.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn add_user(&self, upn: &str) -> String {
        let id = uuid_for(upn);
        self.emu.add_user(User::new(&id, upn));
        id
    }

    /// Runs `photosync -c <config> <args>` and waits (at most 120 s).
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"));
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("PHOTOSYNC_CLIENT_SECRET")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("photosync did not finish within 120 s")
            .unwrap()
    }
}

/// Writes a file only its owner can read, as a secret or key file must be.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A deterministic object id for a name.
pub fn uuid_for(name: &str) -> String {
    let h = blake3::hash(name.as_bytes()).to_hex();
    let h = h.as_str();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A small, valid, distinct JPEG (different `seed`, different bytes).
pub fn jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([
            (x * 4) as u8,
            (y * 5) as u8,
            (seed.wrapping_mul(37) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// A valid JPEG whose bytes are unique for every `n`: [`jpeg`] with a comment segment naming
/// `n` (`jpeg` alone repeats itself every 256 seeds).
pub fn unique_jpeg(n: u32) -> Vec<u8> {
    let base = jpeg(n);
    let comment = format!("photosync test photo {n}");
    let len = u16::try_from(comment.len() + 2).unwrap();
    let mut out = Vec::with_capacity(base.len() + comment.len() + 4);
    out.extend_from_slice(&base[..2]); // SOI
    out.extend_from_slice(&[0xFF, 0xFE]); // COM
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&base[2..]);
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Uploads the emulator received (PUT or PATCH photo requests answered 2xx).
pub fn uploads_ok(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                graph_emulator::RequestKind::PhotoPut | graph_emulator::RequestKind::PhotoPatch
            ) && (200..300).contains(&r.status)
        })
        .count()
}

/// Every photo upload request the emulator saw, answered or not.
pub fn upload_requests(emu: &Emulator) -> Vec<graph_emulator::Recorded> {
    emu.requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.kind,
                graph_emulator::RequestKind::PhotoPut | graph_emulator::RequestKind::PhotoPatch
            )
        })
        .collect()
}
