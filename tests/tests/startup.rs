//! What a process says when its configuration is wrong: it refuses to
//! start, before anything says "started", with a message that names the
//! key of the configuration file, the file and what is wrong (issue #25).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use federation_tests::{bin_dir, free_addr};
use hotline_proto::identity::Identity;
use simulator::pki::Pki;

/// Runs `bin --config config` and returns what it printed, stdout and
/// stderr together; panics if it is still running after a minute (it
/// started when it should have refused) or if it exited 0.
fn refused(bin: &str, config: &Path) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(bin_dir().join(bin))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.reopen().unwrap()))
        .stderr(Stdio::from(out.reopen().unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{bin} still running a minute after it started: {}",
                std::fs::read_to_string(out.path()).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(out.path()).unwrap();
    assert!(!status.success(), "{bin} exited {status}: {text}");
    assert!(
        !text.contains("started"),
        "{bin} said it started before it refused: {text}"
    );
    text
}

struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(
        &dir.path().join("certs"),
        &hotline_proto::Catalogue::default(),
    )
    .unwrap();
    Setup { dir, pki }
}

impl Setup {
    /// Luzhou's node configuration with `tls` as its [tls] table.
    fn node(&self, tls: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("luzhou.toml");
        std::fs::write(
            &path,
            format!(
                "city = \"luzhou\"\nlisten = \"{}\"\ndata_dir = \"{}\"\ngateway = \"https://127.0.0.1:1\"\n{tls}",
                free_addr(),
                self.dir.path().join("luzhou").display()
            ),
        )
        .unwrap();
        path
    }

    fn tls(&self, ca: &Identity, cert: &Identity, key: &Identity) -> String {
        let (ca, cert, key) = (
            self.pki.files(ca),
            self.pki.files(cert),
            self.pki.files(key),
        );
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.ca.display(),
            cert.cert.display(),
            key.key.display()
        )
    }
}

fn city(c: &str) -> Identity {
    Identity::City(c.into())
}

#[test]
fn a_node_with_another_citys_certificate_refuses_to_start_naming_both_cities() {
    let s = setup();
    let yibin = city("yibin");
    let text = refused("city-node", &s.node(&s.tls(&yibin, &yibin, &yibin)));
    assert!(text.contains("tls.cert"), "{text}");
    assert!(text.contains("city yibin"), "{text}");
    assert!(text.contains("city luzhou"), "{text}");
    assert!(text.contains("luzhou.toml"), "{text}");
}

#[test]
fn a_missing_certificate_and_a_key_not_of_the_certificate_name_their_key() {
    let s = setup();
    let luzhou = city("luzhou");
    // The certificate's file is not there.
    let tls = s
        .tls(&luzhou, &luzhou, &luzhou)
        .replace("luzhou.pem", "luzhou-missing.pem");
    let text = refused("city-node", &s.node(&tls));
    assert!(text.contains("tls.cert"), "{text}");
    assert!(text.contains("luzhou-missing.pem"), "{text}");
    // Luzhou's certificate with Yibin's key.
    let text = refused(
        "city-node",
        &s.node(&s.tls(&luzhou, &luzhou, &city("yibin"))),
    );
    assert!(text.contains("tls.key"), "{text}");
    assert!(text.contains("not the key of the certificate"), "{text}");
    assert!(text.contains("yibin.key"), "{text}");
    // A key file that holds no key.
    let tls = s
        .tls(&luzhou, &luzhou, &luzhou)
        .replace("city-luzhou.key", "city-luzhou.pem");
    let text = refused("city-node", &s.node(&tls));
    assert!(text.contains("tls.key"), "{text}");
}

#[test]
fn a_gateway_with_a_citys_certificate_refuses_to_start() {
    let s = setup();
    let luzhou = city("luzhou");
    let path = s.dir.path().join("gateway.toml");
    let mut nodes = String::from("[nodes]\n");
    for c in federation_tests::CITIES {
        nodes.push_str(&format!("{c} = \"https://127.0.0.1:1\"\n"));
    }
    std::fs::write(
        &path,
        format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\n{nodes}\n{}",
            free_addr(),
            s.dir.path().join("gateway").display(),
            s.tls(&Identity::Gateway, &luzhou, &luzhou)
        ),
    )
    .unwrap();
    let text = refused("gateway", &path);
    assert!(text.contains("tls.cert"), "{text}");
    assert!(text.contains("city luzhou"), "{text}");
    assert!(text.contains("the gateway"), "{text}");
}
