//! Corruption is reported, never silent: copies of a crashed hub's data directory with the
//! newest write-ahead log damaged (64 bytes flipped in the middle), the newest log cut to
//! nothing, or the MANIFEST cut in half each refuse to start with an error naming what is
//! wrong, `ds-rm check` fails on each, and the refused directory is left byte-for-byte as it
//! was. The undamaged copy (the control) passes the check and starts with every acknowledged
//! write — including the spent-token nonces a silent loss would let someone spend again.

use mimi_rm_tests::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn newest(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .max()
        .unwrap_or_else(|| panic!("no {prefix}*{suffix} in {}", dir.display()))
}

/// `ds-rm check DIR`: exit status and combined output.
fn check(dir: &Path) -> (bool, String) {
    let out = Command::new(hub_binary())
        .arg("check")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

type Damage = fn(&Path) -> String;

fn flip_log_middle(dir: &Path) -> String {
    let log = newest(dir, "", ".log");
    let mut b = std::fs::read(&log).unwrap();
    let mid = b.len() / 2;
    for x in &mut b[mid..mid + 64] {
        *x ^= 0xA5;
    }
    std::fs::write(&log, b).unwrap();
    log.file_name().unwrap().to_string_lossy().into_owned()
}

fn truncate_log(dir: &Path) -> String {
    let log = newest(dir, "", ".log");
    std::fs::write(&log, b"").unwrap();
    log.file_name().unwrap().to_string_lossy().into_owned()
}

fn cut_manifest(dir: &Path) -> String {
    let m = newest(dir, "MANIFEST-", "");
    let b = std::fs::read(&m).unwrap();
    std::fs::write(&m, &b[..b.len() / 2]).unwrap();
    m.file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_is_refused_naming_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    // The first scrub (at start) puts a flush into the MANIFEST; none follows, so everything
    // the clients do stays in the newest log, as after any crash between scrubs.
    let mut hub = hub_with_config(dir.path(), "scrub_interval_secs = 3600\n");
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    for i in 0..20 {
        alice.send(&g, format!("m{i}").as_bytes()).await.unwrap();
    }
    hub.crash();
    let spent = hub
        .dump()
        .iter()
        .filter(|(cf, _, _)| *cf == mimi_ds_rm::store::Cf::PpSpent)
        .count();
    assert!(spent >= 20, "tokens were spent: {spent}");

    let pristine = dir.path().join("pristine");
    copy_dir(&hub.data, &pristine);
    let (ok, out) = check(&pristine);
    assert!(ok, "control: the undamaged copy checks out: {out}");
    let control = dir.path().join("control");
    copy_dir(&pristine, &control);
    hub.try_serve(&control, Duration::from_secs(30))
        .expect("control: the undamaged copy starts");

    let cases: [(&str, Damage); 3] = [
        ("64 bytes flipped in the newest log", flip_log_middle),
        ("the newest log cut to nothing", truncate_log),
        ("the MANIFEST cut in half", cut_manifest),
    ];
    for (what, damage) in cases {
        let copy = dir.path().join(what.replace(' ', "-"));
        copy_dir(&pristine, &copy);
        let file = damage(&copy);
        let before = dir_files(&copy);
        let err = hub
            .try_serve(&copy, Duration::from_secs(30))
            .expect_err(what);
        assert!(
            err.contains(&file),
            "{what}: the refusal names {file}:\n{err}"
        );
        let (ok, out) = check(&copy);
        assert!(!ok, "{what}: ds-rm check passed:\n{out}");
        assert_eq!(
            dir_files(&copy),
            before,
            "{what}: a refused start changed files"
        );
        eprintln!("{what}: refused: {}", err.lines().last().unwrap_or(""));
    }
}
