//! Store tests with an injected clock (threats 1 and 2).

use super::*;
use std::sync::Arc;

const T0: UnixMillis = 1_800_000_000_000;
const TTL: i64 = 60_000;

fn token(n: u8) -> Token {
    Token {
        id: [n; 16],
        secret: [n.wrapping_add(100); 32],
    }
}

fn cert(serial: &[u8]) -> NewCert<'_> {
    NewCert {
        serial,
        not_after: T0 + 1_000_000,
    }
}

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    (dir, store)
}

#[test]
fn spend_once_then_refused() {
    let (_d, s) = fresh();
    s.add_token("a", &token(1), T0, T0 + TTL, false)
        .expect("add");
    assert_eq!(
        s.spend_token("a", &token(1), cert(b"1"), T0 + 1)
            .expect("db"),
        Ok(())
    );
    assert_eq!(
        s.spend_token("a", &token(1), cert(b"2"), T0 + 2)
            .expect("db"),
        Err(Refusal::Spent)
    );
}

#[test]
fn expiry_is_exact() {
    let (_d, s) = fresh();
    s.add_token("a", &token(1), T0, T0 + TTL, false)
        .expect("add");
    s.add_token("b", &token(2), T0, T0 + TTL, false)
        .expect("add");
    assert_eq!(
        s.spend_token("a", &token(1), cert(b"1"), T0 + TTL - 1)
            .expect("db"),
        Ok(())
    );
    assert_eq!(
        s.spend_token("b", &token(2), cert(b"2"), T0 + TTL)
            .expect("db"),
        Err(Refusal::Expired)
    );
}

#[test]
fn wrong_secret_site_and_unknown() {
    let (_d, s) = fresh();
    s.add_token("a", &token(1), T0, T0 + TTL, false)
        .expect("add");
    let mut bad = token(1);
    bad.secret[31] ^= 1;
    assert_eq!(
        s.spend_token("a", &bad, cert(b"1"), T0).expect("db"),
        Err(Refusal::BadSecret)
    );
    assert_eq!(
        s.spend_token("b", &token(1), cert(b"1"), T0).expect("db"),
        Err(Refusal::WrongSite)
    );
    assert_eq!(
        s.spend_token("a", &token(9), cert(b"1"), T0).expect("db"),
        Err(Refusal::UnknownToken)
    );
}

#[test]
fn replay_after_restart_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let s = Store::open(&path).expect("open");
        s.add_token("a", &token(1), T0, T0 + TTL, false)
            .expect("add");
        assert_eq!(
            s.spend_token("a", &token(1), cert(b"1"), T0).expect("db"),
            Ok(())
        );
    }
    let s = Store::open(&path).expect("reopen");
    assert_eq!(
        s.schema_version().expect("version"),
        MIGRATIONS.len() as u32
    );
    assert_eq!(
        s.spend_token("a", &token(1), cert(b"2"), T0).expect("db"),
        Err(Refusal::Spent)
    );
}

#[test]
fn reissue_invalidates_older_and_revoke_blocks_everything() {
    let (_d, s) = fresh();
    s.add_token("a", &token(1), T0, T0 + TTL, false)
        .expect("add");
    s.add_token("a", &token(2), T0, T0 + TTL, false)
        .expect("second token while pending");
    assert_eq!(
        s.spend_token("a", &token(1), cert(b"1"), T0).expect("db"),
        Err(Refusal::Invalidated)
    );
    assert_eq!(
        s.spend_token("a", &token(2), cert(b"2"), T0).expect("db"),
        Ok(())
    );
    assert!(
        s.add_token("a", &token(3), T0, T0 + TTL, false).is_err(),
        "enrolled needs --reissue"
    );
    assert_eq!(s.check_cert("a", b"2", T0).expect("db"), Ok(()));
    assert_eq!(
        s.check_cert("b", b"2", T0).expect("db"),
        Err(Refusal::CertSiteMismatch)
    );
    assert_eq!(
        s.check_cert("a", b"9", T0).expect("db"),
        Err(Refusal::UnknownCert)
    );
    s.revoke_site("a", T0).expect("revoke");
    assert_eq!(
        s.check_cert("a", b"2", T0).expect("db"),
        Err(Refusal::SiteRevoked)
    );
    assert!(s.is_revoked("a").expect("db"));
    assert!(
        s.add_token("a", &token(4), T0, T0 + TTL, true).is_err(),
        "revoked stays revoked"
    );
    assert!(s.revoke_site("a", T0).is_err());
    assert!(s.revoke_site("nope", T0).is_err());
    let list = s.list(T0).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, SiteState::Revoked);
}

#[test]
fn racing_spends_exactly_one_wins() {
    let (_d, s) = fresh();
    let s = Arc::new(s);
    for round in 0..20u8 {
        let site = format!("s{round}");
        s.add_token(&site, &token(round), T0, T0 + TTL, false)
            .expect("add");
        let barrier = Arc::new(std::sync::Barrier::new(64));
        let handles: Vec<_> = (0..64u8)
            .map(|i| {
                let (s, site, barrier) = (s.clone(), site.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let serial = [round, i];
                    s.spend_token(&site, &token(round), cert(&serial), T0)
                        .expect("db")
                        .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().expect("join"))
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
}

#[test]
fn viewers_add_update_remove() {
    let (_d, s) = fresh();
    let allow = vec!["paris/cam1".to_string(), "lyon/*".to_string()];
    s.put_viewer("alice", Some([1; 16]), &allow, false, 10)
        .expect("test");
    assert!(matches!(
        s.put_viewer("alice", Some([2; 16]), &allow, false, 11),
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        s.put_viewer("bob", None, &allow, true, 11),
        Err(StoreError::Refused(_))
    ));
    // An update without a password keeps it.
    s.put_viewer("alice", None, &["*".to_string()], true, 12)
        .expect("test");
    let v = s.viewers().expect("test");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].ha1, [1; 16]);
    assert_eq!(v[0].allow, vec!["*".to_string()]);
    assert_eq!(v[0].updated_at, 12);
    s.put_viewer("alice", Some([3; 16]), &allow, true, 13)
        .expect("test");
    assert_eq!(s.viewers().expect("test")[0].ha1, [3; 16]);
    s.remove_viewer("alice").expect("test");
    assert!(s.viewers().expect("test").is_empty());
    assert!(s.remove_viewer("alice").is_err());
}

#[test]
fn a_version_1_store_gains_the_viewers_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let c = rusqlite::Connection::open(&path).expect("test");
        c.execute_batch(MIGRATIONS[0]).expect("test");
        c.pragma_update(None, "user_version", 1u32).expect("test");
        c.execute("INSERT INTO sites (name, created_at) VALUES ('old', 1)", [])
            .expect("test");
    }
    let s = Store::open(&path).expect("migrates");
    assert_eq!(s.schema_version().expect("test"), 2);
    assert_eq!(s.list(T0).expect("test")[0].name, "old");
    s.put_viewer("v", Some([0; 16]), &["*".into()], false, 1)
        .expect("test");
}
