//! The behaviour every [`Store`] must have, one function per case, run on
//! each backend by [`conformance_suite!`]: a backend passes when it answers
//! exactly as the others do (return values on missing rows, conflicts,
//! transactions that change nothing on failure, ordering, audit paging).

use warden_store::{
    ApiKeyRecord, AuditAnchor, AuditQuery, AuditRow, ClientRecord, SigningKeyRecord, Store,
    StoreError, UserRecord,
};

/// Defines one `#[test]` per case, each on a fresh, empty store made by
/// `$open()`, which returns `(guard, store)`; the guard (e.g. the server)
/// lives until the case is over.
macro_rules! conformance_suite {
    ($open:expr) => {
        $crate::conformance::conformance_suite!(@cases $open;
            keys_round_trip_revoke_and_rotate,
            the_first_key_of_a_role_is_inserted_once,
            rotation_changes_nothing_when_it_fails,
            expiry_counts_for_active,
            last_use_keeps_the_latest_time,
            users_clients_and_signing_keys,
            missing_and_repeated_changes_return_false,
            lists_sort_by_time_then_id_in_byte_order,
            audit_append_is_all_or_none,
            audit_rows_head_and_replicas,
            audit_queries_filter_page_and_bound_their_scan,
            audit_filters_compare_json_types,
            audit_prune_removes_the_head_of_the_chain_behind_an_anchor,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_guard, store) = $open();
                crate::conformance::$case(&*store);
            }
        )*
    };
}
pub(crate) use conformance_suite;

fn key(id: &str, role: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        name: format!("{id}-name"),
        role: role.into(),
        models: Some(vec!["iris".into(), "digits".into()]),
        secret_hash: [7; 32],
        created_at: 100,
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
        last_used_at: None,
    }
}

fn user(name: &str, at: i64) -> UserRecord {
    UserRecord {
        name: name.into(),
        role: "predict".into(),
        password_hash: "$argon2id$x".into(),
        created_at: at,
        disabled_at: None,
    }
}

fn client(id: &str, at: i64) -> ClientRecord {
    ClientRecord {
        id: id.into(),
        name: "svc".into(),
        role: "predict".into(),
        secret_hash: "$argon2id$s".into(),
        created_at: at,
        revoked_at: None,
    }
}

fn signing(kid: &str, at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        private_pkcs8: vec![1, 0, 255],
        public_key: vec![2; 32],
        created_at: at,
        retired_at: None,
    }
}

fn audit(replica: &str, seq: i64, record: String) -> AuditRow {
    AuditRow {
        replica: replica.into(),
        seq,
        record,
        prev: vec![seq as u8; 32],
        mac: vec![!(seq as u8); 32],
    }
}

fn seqs(rows: &[AuditRow]) -> Vec<i64> {
    rows.iter().map(|r| r.seq).collect()
}

pub(crate) fn the_first_key_of_a_role_is_inserted_once(s: &dyn Store) {
    assert!(
        s.insert_key_if_role_unused(&key("a1", "admin"), 200)
            .unwrap()
    );
    assert!(
        !s.insert_key_if_role_unused(&key("a2", "admin"), 200)
            .unwrap(),
        "an active admin key exists"
    );
    assert!(s.get_key("a2").unwrap().is_none(), "nothing was inserted");
    assert!(
        s.insert_key_if_role_unused(&key("p1", "predict"), 200)
            .unwrap()
    );
    // Once the admin key is revoked the role is free again.
    assert!(s.revoke_key("a1", 300).unwrap());
    assert!(
        s.insert_key_if_role_unused(&key("a3", "admin"), 400)
            .unwrap()
    );
}

pub(crate) fn keys_round_trip_revoke_and_rotate(s: &dyn Store) {
    s.insert_key(&key("a", "admin")).unwrap();
    assert!(matches!(
        s.insert_key(&key("a", "admin")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_key("a").unwrap().unwrap(), key("a", "admin"));
    assert!(s.get_key("zz").unwrap().is_none());
    assert!(s.has_active_key_with_role("admin", 200).unwrap());

    assert!(s.revoke_key("a", 150).unwrap());
    assert!(
        !s.revoke_key("a", 160).unwrap(),
        "second revoke changes nothing"
    );
    assert_eq!(s.get_key("a").unwrap().unwrap().revoked_at, Some(150));
    assert!(!s.has_active_key_with_role("admin", 200).unwrap());

    s.insert_key(&key("b", "predict")).unwrap();
    let mut c = key("c", "predict");
    c.rotated_from = Some("b".into());
    assert!(s.rotate_key("b", &c, 300, 360).unwrap());
    assert_eq!(s.get_key("b").unwrap().unwrap().expires_at, Some(360));
    assert_eq!(s.get_key("c").unwrap().unwrap(), c);
    assert!(!s.rotate_key("b", &key("d", "predict"), 400, 460).unwrap());
    assert!(
        s.get_key("d").unwrap().is_none(),
        "failed rotation inserts nothing"
    );
    let ids: Vec<_> = s.list_keys().unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);

    // Every field survives, the unset ones too.
    let mut full = key("f", "admin");
    full.models = None;
    full.secret_hash = std::array::from_fn(|i| i as u8);
    full.expires_at = Some(i64::MAX);
    full.revoked_at = Some(-1);
    full.last_used_at = Some(0);
    s.insert_key(&full).unwrap();
    assert_eq!(s.get_key("f").unwrap().unwrap(), full);
}

pub(crate) fn rotation_changes_nothing_when_it_fails(s: &dyn Store) {
    let mut old = key("old", "predict");
    old.expires_at = Some(1_000);
    s.insert_key(&old).unwrap();
    s.insert_key(&key("taken", "predict")).unwrap();

    // The new id exists: Conflict, and the old key keeps its expiry.
    assert!(matches!(
        s.rotate_key("old", &key("taken", "predict"), 10, 500),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_key("old").unwrap().unwrap().expires_at, Some(1_000));

    // An expiry already sooner than the grace period's end is kept.
    assert!(
        s.rotate_key("old", &key("new", "predict"), 10, 2_000)
            .unwrap()
    );
    assert_eq!(s.get_key("old").unwrap().unwrap().expires_at, Some(1_000));

    // Expired (at `now`), revoked and missing keys do not rotate.
    assert!(
        !s.rotate_key("old", &key("n2", "predict"), 1_000, 3_000)
            .unwrap()
    );
    s.revoke_key("taken", 5).unwrap();
    assert!(
        !s.rotate_key("taken", &key("n3", "predict"), 10, 20)
            .unwrap()
    );
    assert!(!s.rotate_key("nope", &key("n4", "predict"), 10, 20).unwrap());
    let ids: Vec<_> = s.list_keys().unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["new", "old", "taken"]);
}

pub(crate) fn expiry_counts_for_active(s: &dyn Store) {
    let mut k = key("e", "admin");
    k.expires_at = Some(200);
    s.insert_key(&k).unwrap();
    assert!(s.has_active_key_with_role("admin", 199).unwrap());
    assert!(!s.has_active_key_with_role("admin", 200).unwrap());
    assert!(!s.has_active_key_with_role("predict", 0).unwrap());
    assert!(k.is_active(199) && !k.is_active(200));
}

pub(crate) fn last_use_keeps_the_latest_time(s: &dyn Store) {
    s.insert_key(&key("a", "admin")).unwrap();
    s.insert_key(&key("b", "admin")).unwrap();
    s.touch_keys(&[("a".into(), 500), ("a".into(), 400), ("zz".into(), 1)])
        .unwrap();
    assert_eq!(s.get_key("a").unwrap().unwrap().last_used_at, Some(500));
    s.touch_keys(&[("a".into(), 450), ("b".into(), 7)]).unwrap();
    assert_eq!(s.get_key("a").unwrap().unwrap().last_used_at, Some(500));
    assert_eq!(s.get_key("b").unwrap().unwrap().last_used_at, Some(7));
    s.touch_keys(&[]).unwrap();
}

pub(crate) fn users_clients_and_signing_keys(s: &dyn Store) {
    let alice = user("alice", 1);
    s.insert_user(&alice).unwrap();
    assert!(matches!(
        s.insert_user(&alice),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.set_user_password("alice", "$argon2id$y").unwrap());
    assert!(s.disable_user("alice", 5).unwrap());
    assert!(!s.disable_user("alice", 6).unwrap());
    let got = s.get_user("alice").unwrap().unwrap();
    assert_eq!(
        (got.password_hash.as_str(), got.disabled_at),
        ("$argon2id$y", Some(5))
    );
    assert!(
        !format!("{got:?}").contains("argon2"),
        "Debug hides the hash"
    );
    assert_eq!(s.list_users().unwrap(), [got]);

    let c1 = client("c1", 1);
    s.insert_client(&c1).unwrap();
    assert!(matches!(s.insert_client(&c1), Err(StoreError::Conflict(_))));
    assert!(s.set_client_secret("c1", "$argon2id$t").unwrap());
    assert_eq!(
        s.get_client("c1").unwrap().unwrap().secret_hash,
        "$argon2id$t"
    );
    assert!(s.revoke_client("c1", 9).unwrap());
    assert!(!s.set_client_secret("c1", "$argon2id$u").unwrap());
    let got = s.get_client("c1").unwrap().unwrap();
    assert_eq!(
        (got.secret_hash.as_str(), got.revoked_at),
        ("$argon2id$t", Some(9))
    );
    assert_eq!(s.list_clients().unwrap().len(), 1);

    assert!(s.list_signing_keys().unwrap().is_empty());
    s.rotate_signing_key(&signing("k1", 10), 10).unwrap();
    s.rotate_signing_key(&signing("k2", 20), 20).unwrap();
    // A duplicate kid is a Conflict and retires nothing.
    assert!(matches!(
        s.rotate_signing_key(&signing("k1", 30), 30),
        Err(StoreError::Conflict(_))
    ));
    let keys = s.list_signing_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].kid, "k2");
    assert_eq!((keys[0].retired_at, keys[1].retired_at), (None, Some(20)));
    assert!(keys[0] == signing("k2", 20), "bytes survive");
}

pub(crate) fn missing_and_repeated_changes_return_false(s: &dyn Store) {
    assert!(!s.revoke_key("nope", 1).unwrap());
    assert!(!s.set_user_password("nope", "h").unwrap());
    assert!(!s.disable_user("nope", 1).unwrap());
    assert!(!s.set_client_secret("nope", "h").unwrap());
    assert!(!s.revoke_client("nope", 1).unwrap());
    assert!(s.get_user("nope").unwrap().is_none());
    assert!(s.get_client("nope").unwrap().is_none());
    s.insert_client(&client("c", 1)).unwrap();
    assert!(s.revoke_client("c", 2).unwrap());
    assert!(!s.revoke_client("c", 3).unwrap());
    assert_eq!(s.get_client("c").unwrap().unwrap().revoked_at, Some(2));
    // A password may be set on a disabled user.
    s.insert_user(&user("u", 1)).unwrap();
    s.disable_user("u", 2).unwrap();
    assert!(s.set_user_password("u", "h2").unwrap());
}

pub(crate) fn lists_sort_by_time_then_id_in_byte_order(s: &dyn Store) {
    // Byte order, not a language's: "B" < "a" < "z" < "é".
    for (id, at) in [("é", 1), ("z", 1), ("B", 1), ("a", 1), ("first", 0)] {
        s.insert_key(&ApiKeyRecord {
            created_at: at,
            ..key(id, "r")
        })
        .unwrap();
        s.insert_user(&user(id, at)).unwrap();
        s.insert_client(&client(id, at)).unwrap();
    }
    let order = ["first", "B", "a", "z", "é"];
    let keys: Vec<_> = s.list_keys().unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(keys, order);
    let users: Vec<_> = s
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(users, order);
    let clients: Vec<_> = s
        .list_clients()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(clients, order);

    // Signing keys: newest first, then kid in byte order.
    for (kid, at) in [("b", 5), ("A", 5), ("old", 1)] {
        s.rotate_signing_key(&signing(kid, at), at).unwrap();
    }
    let kids: Vec<_> = s
        .list_signing_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["A", "b", "old"]);
}

pub(crate) fn audit_append_is_all_or_none(s: &dyn Store) {
    let rec = |seq| format!(r#"{{"seq":{seq}}}"#);
    s.append_audit(&[]).unwrap();
    s.append_audit(&(1..=3).map(|i| audit("r", i, rec(i))).collect::<Vec<_>>())
        .unwrap();
    // A batch that repeats a stored row: Conflict, and none of it stored.
    let batch: Vec<_> = [4, 5, 3].map(|i| audit("r", i, rec(i))).into();
    assert!(matches!(
        s.append_audit(&batch),
        Err(StoreError::Conflict(_))
    ));
    // A batch that repeats itself: the same.
    let batch: Vec<_> = [4, 4].map(|i| audit("r", i, rec(i))).into();
    assert!(matches!(
        s.append_audit(&batch),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.audit_head("r").unwrap().unwrap().seq, 3);
    assert_eq!(seqs(&s.audit_rows("r", 1, 100).unwrap()), [1, 2, 3]);
    // The same seq on another replica is no conflict.
    s.append_audit(&[audit("other", 3, rec(3))]).unwrap();
    s.append_audit(&[audit("r", 4, rec(4))]).unwrap();
    assert_eq!(s.audit_head("r").unwrap().unwrap(), audit("r", 4, rec(4)));
}

pub(crate) fn audit_rows_head_and_replicas(s: &dyn Store) {
    assert!(s.audit_head("r").unwrap().is_none());
    assert!(s.audit_replicas().unwrap().is_empty());
    assert!(s.audit_rows("r", 1, 10).unwrap().is_empty());
    let rows: Vec<_> = (1..=10)
        .map(|i| audit("r", i, format!(r#"{{"i":{i}}}"#)))
        .collect();
    s.append_audit(&rows).unwrap();
    s.append_audit(&[audit("b", 1, "{}".into()), audit("A", 1, "{}".into())])
        .unwrap();
    assert_eq!(s.audit_replicas().unwrap(), ["A", "b", "r"]);
    assert_eq!(s.audit_rows("r", 4, 3).unwrap(), rows[3..6]);
    assert_eq!(seqs(&s.audit_rows("r", 9, 100).unwrap()), [9, 10]);
    assert!(s.audit_rows("r", 11, 100).unwrap().is_empty());
    assert!(s.audit_rows("r", 1, 0).unwrap().is_empty());
    assert_eq!(s.audit_rows("r", 1, usize::MAX).unwrap().len(), 10);
    assert_eq!(s.audit_head("r").unwrap().unwrap(), rows[9]);
}

pub(crate) fn audit_prune_removes_the_head_of_the_chain_behind_an_anchor(s: &dyn Store) {
    let rec = |seq| format!(r#"{{"seq":{seq}}}"#);
    assert!(s.audit_anchor("r").unwrap().is_none());
    let rows: Vec<_> = (1..=10).map(|i| audit("r", i, rec(i))).collect();
    s.append_audit(&rows).unwrap();
    s.append_audit(&[audit("other", 1, rec(1))]).unwrap();
    let anchor = |seq: i64| AuditAnchor {
        replica: "r".into(),
        seq,
        head: rows[seq as usize - 1].mac.clone(),
        sig: vec![seq as u8; 32],
    };
    assert_eq!(s.prune_audit(&anchor(4)).unwrap(), 4);
    assert_eq!(s.audit_anchor("r").unwrap(), Some(anchor(4)));
    assert_eq!(
        seqs(&s.audit_rows("r", 1, 100).unwrap()),
        [5, 6, 7, 8, 9, 10]
    );
    // Pruning again moves the anchor; other chains are untouched.
    assert_eq!(s.prune_audit(&anchor(7)).unwrap(), 3);
    assert_eq!(s.audit_anchor("r").unwrap(), Some(anchor(7)));
    assert_eq!(seqs(&s.audit_rows("r", 0, 100).unwrap()), [8, 9, 10]);
    assert_eq!(s.audit_head("r").unwrap().unwrap().seq, 10);
    assert_eq!(s.audit_rows("other", 1, 10).unwrap().len(), 1);
    assert!(s.audit_anchor("other").unwrap().is_none());
    assert_eq!(s.audit_replicas().unwrap(), ["other", "r"]);
}

pub(crate) fn audit_queries_filter_page_and_bound_their_scan(s: &dyn Store) {
    let rows: Vec<AuditRow> = (1..=50)
        .map(|seq| {
            audit(
                "r",
                seq,
                format!(
                    r#"{{"principal":"{}","time_us":{seq},"outcome":"{}","model":"{}"}}"#,
                    if seq % 10 == 0 { "rare" } else { "common" },
                    if seq % 2 == 0 { "ok" } else { "denied" },
                    if seq % 3 == 0 { "iris" } else { "digits" },
                ),
            )
        })
        .collect();
    s.append_audit(&rows).unwrap();
    assert_eq!(s.audit_replicas().unwrap(), ["r"]);
    let mut q = AuditQuery {
        replica: "r".into(),
        principal: Some("rare".into()),
        limit: 100,
        max_scan: 15,
        ..AuditQuery::default()
    };
    // Pages of at most 15 examined rows: [10] [20, 30] [40] [50].
    let mut pages = Vec::new();
    loop {
        let page = s.audit_query(&q).unwrap();
        pages.push((seqs(&page.rows), page.next));
        match page.next {
            Some(n) => q.after_seq = n,
            None => break,
        }
    }
    assert_eq!(
        pages,
        [
            (vec![10], Some(15)),
            (vec![20, 30], Some(30)),
            (vec![40], Some(45)),
            (vec![50], None),
        ]
    );
    // A full page ends at its last row; time bounds are half-open.
    let page = s
        .audit_query(&AuditQuery {
            replica: "r".into(),
            since_us: Some(5),
            until_us: Some(8),
            limit: 2,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(seqs(&page.rows), [5, 6]);
    assert_eq!(page.next, Some(6));
    // Filters combine; the rows come back as stored, MACs included.
    let page = s
        .audit_query(&AuditQuery {
            replica: "r".into(),
            model: Some("iris".into()),
            outcome: Some("ok".into()),
            until_us: Some(31),
            limit: 100,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(seqs(&page.rows), [6, 12, 18, 24, 30]);
    assert_eq!(page.rows[0], rows[5]);
    assert_eq!(page.next, None);
    // A scan that ends before the chain does says where to go on, even
    // with nothing found; an unknown replica has no rows and no next page.
    let page = s
        .audit_query(&AuditQuery {
            replica: "r".into(),
            principal: Some("nobody".into()),
            limit: 10,
            max_scan: 20,
            after_seq: 5,
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(page.rows.is_empty());
    assert_eq!(page.next, Some(25));
    let page = s
        .audit_query(&AuditQuery {
            replica: "none".into(),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(page.rows.is_empty() && page.next.is_none());
    // A limit of 0 returns nothing and ends the listing.
    let page = s
        .audit_query(&AuditQuery {
            replica: "r".into(),
            limit: 0,
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(page.rows.is_empty() && page.next.is_none());
}

pub(crate) fn audit_filters_compare_json_types(s: &dyn Store) {
    // A text filter matches JSON strings only; times compare as numbers.
    let records = [
        r#"{"principal":"7","time_us":100}"#,
        r#"{"principal":7,"time_us":200}"#,
        r#"{"principal":null,"time_us":300.5}"#,
        r#"{"time_us":1e3}"#,
        r#"{"principal":"a\"b","model":"m\u00e9"}"#,
        // A NUL in a value must not fail the queries whose scan reaches it
        // (whether it can match a filter is up to the backend).
        r#"{"principal":"x\u0000y","outcome":"ok"}"#,
    ];
    let rows: Vec<_> = records
        .iter()
        .zip(1..)
        .map(|(r, seq)| audit("r", seq, (*r).to_owned()))
        .collect();
    s.append_audit(&rows).unwrap();
    let run = |q: AuditQuery| {
        seqs(
            &s.audit_query(&AuditQuery {
                replica: "r".into(),
                limit: 100,
                ..q
            })
            .unwrap()
            .rows,
        )
    };
    assert_eq!(
        run(AuditQuery {
            principal: Some("7".into()),
            ..AuditQuery::default()
        }),
        [1]
    );
    assert_eq!(run(AuditQuery::default()), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        run(AuditQuery {
            principal: Some("a\"b".into()),
            ..AuditQuery::default()
        }),
        [5]
    );
    assert_eq!(
        run(AuditQuery {
            model: Some("mé".into()),
            ..AuditQuery::default()
        }),
        [5]
    );
    assert_eq!(
        run(AuditQuery {
            since_us: Some(200),
            ..AuditQuery::default()
        }),
        [2, 3, 4]
    );
    assert_eq!(
        run(AuditQuery {
            since_us: Some(101),
            until_us: Some(301),
            ..AuditQuery::default()
        }),
        [2, 3]
    );
}
