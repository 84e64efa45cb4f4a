//! Fault injection for the queue: corrupt and truncated entries, an unwritable spool, two
//! runners, `kill -9` of an enqueueing process and of a runner mid-batch, 200 concurrent
//! enqueues, orphan cleanup, and a dead letter that cannot be written.
//!
//! Child processes are this test binary itself, re-run with `M365SEND_QUEUE_CHILD` set: the
//! `child_process_helper` test then plays the child's part (and does nothing otherwise).

mod queue_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use m365send::exit::{Exit, Failure};
use m365send::message::{Body, Envelope, Prepared};
use m365send::queue::{self, MessageOutcome, Problem, RunOptions};
use queue_support::*;

const CHILD: &str = "M365SEND_QUEUE_CHILD";

/// A prepared message whose body is `pad` bytes longer than usual.
fn padded(subject: &str, pad: usize) -> Prepared {
    let mut bytes = message_bytes(subject);
    bytes.truncate(bytes.len() - 2);
    for i in 0..pad / 64 {
        bytes.extend_from_slice(format!("{i:062}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(&bytes).unwrap();
    Prepared {
        envelope: Envelope {
            sender: "alerts@contoso.com".into(),
            recipients: vec!["ops@contoso.com".into()],
            dsn: Default::default(),
        },
        body: Body::temporary(tmp.into_temp_path()),
        size: bytes.len() as u64,
        eight_bit: false,
        smtputf8: false,
        header_block: String::new(),
    }
}

#[test]
fn child_process_helper() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let spool = PathBuf::from(std::env::var("SPOOL").unwrap());
    let cfg = config(&spool);
    match mode.as_str() {
        "enqueue-loop" => {
            for n in 0.. {
                let m = padded(&format!("c{n}"), (n % 7) * 40_000);
                queue::enqueue(&cfg, "relay", &m, None).unwrap();
            }
        }
        "enqueue-n" => {
            let prefix = std::env::var("PREFIX").unwrap();
            let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
            for n in 0..count {
                let m = prepared(
                    "alerts@contoso.com",
                    &["ops@contoso.com"],
                    &format!("{prefix}-{n}"),
                );
                queue::enqueue(&cfg, "relay", &m, None).unwrap();
            }
        }
        "runner" => {
            let mut fake = Fake {
                send_delay: Duration::from_millis(20),
                log: Some(PathBuf::from(std::env::var("LOG").unwrap())),
                ..Fake::default()
            };
            rt().block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
                .unwrap();
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn_child(mode: &str, spool: &Path, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_process_helper",
        "--exact",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(CHILD, mode)
    .env("SPOOL", spool)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every committed entry parses and its body has the recorded size.
fn assert_intact(spool: &Path) -> usize {
    let mut n = 0;
    for de in fs::read_dir(spool.join("meta")).unwrap() {
        let path = de.unwrap().path();
        let meta: queue::Entry = serde_json::from_slice(&fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is whole: {e}", path.display()));
        let body = spool.join("msg").join(format!("{}.eml", meta.id));
        assert_eq!(
            fs::metadata(&body).unwrap().len(),
            meta.size,
            "{} has its whole body",
            meta.id
        );
        n += 1;
    }
    n
}

#[test]
fn corrupt_and_truncated_entries_are_moved_aside_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let good = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "good"),
        None,
    )
    .unwrap();
    let trunc = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "trunc"),
        None,
    )
    .unwrap();
    let half = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "half"),
        None,
    )
    .unwrap();
    // A truncated body, a truncated metadata file, garbage, and a body-less entry.
    let body = spool.join("msg").join(format!("{trunc}.eml"));
    let len = fs::metadata(&body).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&body)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let meta = spool.join("meta").join(format!("{half}.json"));
    let bytes = fs::read(&meta).unwrap();
    fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
    fs::write(spool.join("meta/GARBAGE-1.json"), b"\x00\xffnot json").unwrap();
    fs::write(
        spool.join("meta/NOBODY-1.json"),
        fs::read(spool.join("meta").join(format!("{good}.json")))
            .unwrap()
            .replace_ascii(good.as_str(), "NOBODY-1"),
    )
    .unwrap();

    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.corrupt, 4, "{:?}", rep.warnings);
    assert_eq!(rep.delivered, 1);
    assert_eq!(fake.subjects(), vec!["good".to_owned()]);
    assert!(rep.warnings.iter().any(|w| w.contains("moved to")));
    let aside: BTreeSet<String> = fs::read_dir(spool.join("corrupt"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(aside.contains(&format!("{trunc}.eml")) && aside.contains(&format!("{trunc}.json")));
    assert!(aside.contains(&format!("{half}.json")) && aside.contains("GARBAGE-1.json"));
    assert!(queue::list(&cfg).unwrap().is_empty());

    // `list` moves a corrupt entry aside too, and still lists the rest.
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "ok2"),
        None,
    )
    .unwrap();
    fs::write(spool.join("meta/BAD-2.json"), b"{\"version\":1}").unwrap();
    let list = queue::list(&cfg).unwrap();
    assert_eq!(list.len(), 1);
    assert!(spool.join("corrupt/BAD-2.json").exists());
}

trait ReplaceAscii {
    fn replace_ascii(&self, from: &str, to: &str) -> Vec<u8>;
}
impl ReplaceAscii for Vec<u8> {
    fn replace_ascii(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self.clone())
            .unwrap()
            .replace(from, to)
            .into_bytes()
    }
}

#[test]
fn newer_metadata_versions_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "v2"),
        None,
    )
    .unwrap();
    edit_meta(&spool, id.as_str(), |v| v["version"] = 2.into());
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!((rep.corrupt, rep.delivered), (0, 0));
    assert!(rep.warnings.iter().any(|w| w.contains("newer m365send")));
    assert!(spool.join("meta").join(format!("{id}.json")).exists());
}

#[test]
fn unwritable_spool_is_exit_73_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file: not creatable even by root.
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let cfg = config(&file.join("spool"));
    let err = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "nowhere"),
        None,
    )
    .unwrap_err();
    assert_eq!(err.exit, Exit::CantCreat);
    assert_eq!(err.exit.code(), 73);
    assert!(err.message.contains("plain-file"), "{}", err.message);
    assert!(err.message.contains("Not a directory"), "{}", err.message);
    let mut fake = Fake::default();
    let err = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap_err();
    assert_eq!(err.exit, Exit::CantCreat);
    // Listing says what is wrong with the spool path.
    assert!(
        queue::list(&cfg)
            .unwrap_err()
            .message
            .contains("Not a directory")
    );
    // A spool that does not exist yet is an empty queue.
    let cfg = config(&dir.path().join("not-yet"));
    assert!(queue::list(&cfg).unwrap().is_empty());
}

#[test]
fn a_second_runner_exits_cleanly_or_waits_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "locked"),
        None,
    )
    .unwrap();
    let lock = fs::File::open(spool.join("runner.lock"))
        .or_else(|_| fs::File::create(spool.join("runner.lock")))
        .unwrap();
    // SAFETY: flock on our own open file (std's File::lock needs Rust 1.89).
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert!(rep.skipped_locked);
    assert!(
        rep.warnings[0].contains("another queue runner"),
        "{:?}",
        rep.warnings
    );
    assert!(fake.events.is_empty());

    // With a bounded wait, it proceeds once the first runner is done.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(lock);
    });
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                lock_wait: Duration::from_secs(10),
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    releaser.join().unwrap();
    assert!(!rep.skipped_locked);
    assert_eq!(rep.delivered, 1);
}

#[test]
fn two_runners_at_once_deliver_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    for n in 0..10 {
        queue::enqueue(
            &cfg,
            "relay",
            &prepared("alerts@contoso.com", &["ops@contoso.com"], &format!("r{n}")),
            None,
        )
        .unwrap();
    }
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let mut fake = Fake {
                    send_delay: Duration::from_millis(5),
                    ..Fake::default()
                };
                let rep = rt()
                    .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
                    .unwrap();
                (rep, fake.subjects())
            })
        })
        .collect();
    let results: Vec<_> = runners.into_iter().map(|h| h.join().unwrap()).collect();
    let all: Vec<String> = results.iter().flat_map(|r| r.1.clone()).collect();
    assert_eq!(all.len(), 10, "each message once");
    assert_eq!(results.iter().filter(|r| r.0.skipped_locked).count(), 1);
}

#[test]
fn kill_9_while_enqueueing_leaves_only_whole_entries() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut child = spawn_child("enqueue-loop", &spool, &[]);
    wait_until(Duration::from_secs(60), || {
        count_files(&spool.join("meta")) >= 25
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let n = assert_intact(&spool);
    assert!(n >= 25);
    let cfg = config(&spool);
    let list = queue::list(&cfg).unwrap();
    assert_eq!(list.len(), n, "nothing moved aside");
    assert!(!spool.join("corrupt").exists());
    // Leftovers (if any) are only in tmp/ or orphan bodies in msg/, never in meta/.
    let bodies = count_files(&spool.join("msg"));
    assert!(bodies == n || bodies == n + 1, "at most one orphan body");
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.delivered, n);
    assert_eq!(rep.corrupt, 0);
}

#[test]
fn two_hundred_concurrent_enqueues_give_two_hundred_intact_entries() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    // 100 from threads of this process...
    let threads: Vec<_> = (0..100)
        .map(|n| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let m = prepared(
                    "alerts@contoso.com",
                    &["ops@contoso.com"],
                    &format!("t-{n}"),
                );
                queue::enqueue(&cfg, "relay", &m, None).unwrap()
            })
        })
        .collect();
    // ...and 100 from 4 other processes at the same time.
    let children: Vec<_> = (0..4)
        .map(|p| {
            spawn_child(
                "enqueue-n",
                &spool,
                &[("PREFIX", format!("p{p}")), ("COUNT", "25".into())],
            )
        })
        .collect();
    let ids: BTreeSet<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ids.len(), 100);
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(assert_intact(&spool), 200);
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.delivered, 200);
    assert_eq!(rep.sessions, 1, "one connection for all 200");
    let subjects: BTreeSet<String> = fake.subjects().into_iter().collect();
    assert_eq!(subjects.len(), 200, "each exactly once");
    assert!(queue::list(&cfg).unwrap().is_empty());
}

#[test]
fn kill_9_of_a_runner_mid_batch_loses_nothing_and_counts_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let total = 40;
    for n in 0..total {
        queue::enqueue(
            &cfg,
            "relay",
            &prepared("alerts@contoso.com", &["ops@contoso.com"], &format!("k{n}")),
            None,
        )
        .unwrap();
    }
    let log = dir.path().join("delivered-by-child.log");
    let mut child = spawn_child("runner", &spool, &[("LOG", log.display().to_string())]);
    wait_until(Duration::from_secs(60), || {
        fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
            >= 10
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let first: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(first.len() < total, "killed mid-batch");
    assert_intact(&spool);

    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.corrupt, 0);
    let second = fake.subjects();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for s in first.iter().chain(second.iter()) {
        *seen.entry(s.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every message delivered");
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    assert!(seen.values().all(|&c| c <= 2));
    assert!(
        duplicates <= rep.possible_duplicates && rep.possible_duplicates <= 1,
        "duplicates {duplicates}, reported {}",
        rep.possible_duplicates
    );
    assert!(queue::list(&cfg).unwrap().is_empty());
    assert_eq!(count_files(&spool.join("inflight")), 0);
}

#[test]
fn orphans_older_than_an_hour_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "keep"),
        None,
    )
    .unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    let make = |p: PathBuf, aged: bool| {
        let f = fs::File::create(&p).unwrap();
        if aged {
            f.set_modified(old).unwrap();
        }
        p
    };
    let old_tmp = make(spool.join("tmp/ABC-1.eml"), true);
    let new_tmp = make(spool.join("tmp/ABC-2.eml"), false);
    let old_body = make(spool.join("msg/ABC-3.eml"), true);
    let new_body = make(spool.join("msg/ABC-4.eml"), false);
    let mut fake = Fake {
        open_error: Some(Problem::error("down")),
        ..Fake::default()
    };
    rt().block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert!(!old_tmp.exists() && !old_body.exists());
    assert!(new_tmp.exists() && new_body.exists());
    assert_eq!(queue::list(&cfg).unwrap().len(), 1);
}

#[test]
fn when_the_dead_letter_fails_the_message_is_kept_in_failed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("", &["ops@contoso.com"], "dl"),
        None,
    )
    .unwrap();
    let broken = |_: &m365send::config::Config,
                  _: &m365send::config::Profile,
                  _: &Prepared,
                  _: &str|
     -> Result<PathBuf, Failure> {
        Err(Failure::new(
            Exit::CantCreat,
            "cannot write /nonexistent/dead.letter",
        ))
    };
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(reply(550, "5.7.1 denied"), ""))
    });
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                dead_letter: Some(&broken),
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!((rep.preserved, rep.dead_lettered), (1, 0));
    let kept = spool.join("failed").join(format!("{id}.eml"));
    assert!(fs::read_to_string(kept).unwrap().contains("Subject: dl"));
    assert!(queue::list(&cfg).unwrap().is_empty());
}
