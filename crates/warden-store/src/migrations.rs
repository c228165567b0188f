//! The schema's migrations: one list, written once under `migrations/`, and
//! rendered for each backend.
//!
//! The SQL uses three placeholders where SQLite and PostgreSQL differ:
//!
//! | placeholder | SQLite     | PostgreSQL |
//! |-------------|------------|------------|
//! | `{int}`     | `INTEGER`  | `BIGINT`   |
//! | `{blob}`    | `BLOB`     | `BYTEA`    |
//! | `{strict}`  | ` STRICT`  | (nothing)  |
//!
//! Everything else must mean the same in both dialects (`TEXT`, `PRIMARY
//! KEY`, `REFERENCES`, `CREATE INDEX`, `ALTER TABLE ... ADD COLUMN`, `--`
//! comments). Text columns stay `TEXT` in both; PostgreSQL queries that sort
//! by text add `COLLATE "C"` so that the order is SQLite's byte order.
//!
//! **Append only: never edit a released migration.** Databases record only
//! how many migrations they have applied (`PRAGMA user_version` in SQLite,
//! the `warden_schema_migrations` table in PostgreSQL), so an edited
//! migration is never re-run where it was already applied. The tests pin a
//! hash of every rendered migration to catch an accidental edit. (The
//! placeholders were introduced in migrations 1 to 3 after their release:
//! their SQLite rendering is byte for byte the text that was released, which
//! is what the pinned hashes check.)

use std::sync::LazyLock;

/// The migrations, in order: version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_api_keys.sql"),
    include_str!("../migrations/0002_identities.sql"),
    include_str!("../migrations/0003_audit.sql"),
    include_str!("../migrations/0004_audit_anchor.sql"),
];

/// The SQL dialect a migration is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The text for one placeholder name, `None` if the name is unknown.
    fn placeholder(self, name: &str) -> Option<&'static str> {
        Some(match (name, self) {
            ("int", Dialect::Sqlite) => "INTEGER",
            ("int", Dialect::Postgres) => "BIGINT",
            ("blob", Dialect::Sqlite) => "BLOB",
            ("blob", Dialect::Postgres) => "BYTEA",
            ("strict", Dialect::Sqlite) => " STRICT",
            ("strict", Dialect::Postgres) => "",
            _ => return None,
        })
    }
}

/// `sql` with every known `{name}` replaced for `dialect`. Anything else,
/// unknown names included, is copied as it is (a test checks that no
/// migration has an unknown placeholder).
pub(crate) fn render(sql: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((close, dialect.placeholder(&after[..close])?)))
        {
            Some((close, text)) => {
                out.push_str(text);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

static SQLITE: LazyLock<Vec<String>> = LazyLock::new(|| rendered(Dialect::Sqlite));
static POSTGRES: LazyLock<Vec<String>> = LazyLock::new(|| rendered(Dialect::Postgres));

fn rendered(dialect: Dialect) -> Vec<String> {
    MIGRATIONS.iter().map(|sql| render(sql, dialect)).collect()
}

/// Every migration rendered for `dialect`, in order (version `n` at `n - 1`).
pub(crate) fn all(dialect: Dialect) -> &'static [String] {
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// SHA-256 of each released migration as rendered, SQLite then
    /// PostgreSQL. Add a line for a new migration; never change one.
    const PINNED: &[(&str, &str)] = &[
        (
            "98e8e069581d82c938b512a0a0940eecbb5e0b724516481ea032b12c3700346c",
            "bf422898d543f49809d33d90bf51f35c991dd984774782fbdbc82d23e49e0ab0",
        ),
        (
            "84efae972d8fd0f6b71ee382cd4a73c02b8a32ab3ded17824c8b920c775e84d6",
            "352acc3d249ed9f721194d3f4a5b55cdd459199dffd9cd817be075df0baa819c",
        ),
        (
            "0b6583fd7b61f79e3592bc5d88bc17e7f0e8fcb993ce959815ecb81aa334fd4d",
            "0a295bb7c1f19398e47201b2b12c6a95f1046d50d118f96abe6d16f0050d547b",
        ),
        (
            "58af688776c1b996c5f72dd27fde770ef563c5e05aba6cc4d53b81bafb0b1acd",
            "9a09006f01f001dd35170d7c4d950c5dc568e45af90d589902dfda356e61e1c5",
        ),
    ];

    fn sha256_hex(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn released_migrations_are_unchanged() {
        assert_eq!(
            PINNED.len(),
            MIGRATIONS.len(),
            "pin the hashes of a new migration in PINNED"
        );
        for (i, (sqlite, postgres)) in PINNED.iter().enumerate() {
            let version = i + 1;
            assert_eq!(
                sha256_hex(&all(Dialect::Sqlite)[i]),
                *sqlite,
                "migration {version} (SQLite) changed: released migrations are append only"
            );
            assert_eq!(
                sha256_hex(&all(Dialect::Postgres)[i]),
                *postgres,
                "migration {version} (PostgreSQL) changed: released migrations are append only"
            );
        }
    }

    #[test]
    fn every_placeholder_is_known() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for (i, sql) in all(dialect).iter().enumerate() {
                assert!(
                    !sql.contains('{') && !sql.contains('}'),
                    "migration {} has an unknown placeholder for {dialect:?}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn rendering_replaces_only_known_names() {
        let sql = "a {int} b {blob}{strict} {other} {";
        assert_eq!(
            render(sql, Dialect::Sqlite),
            "a INTEGER b BLOB STRICT {other} {"
        );
        assert_eq!(render(sql, Dialect::Postgres), "a BIGINT b BYTEA {other} {");
    }
}
