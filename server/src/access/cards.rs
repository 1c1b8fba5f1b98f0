//! The service cards (便民服务卡) posted on every door: one unguessable token per household that
//! opens the resident's page (`/card/{token}`), and the tracking number of each request left
//! there. A reissued card's old token stops working at once; nothing else is ever deleted.
//!
//! A token is 26 characters of Crockford base32 (128 random bits), a tracking number 10 (50
//! bits, shown as `XXXXX-XXXXX`): neither can be guessed, and a tracking number is looked up
//! only with its card's token.

use qiaomen_protocol::ids::{DemandId, HouseholdId, UserId};

use super::{AccessDb, AccessError, Result, now_ms};

/// The cards and the requests left through them (migration 18 of the embedded store).
pub const CARDS_SCHEMA: &str = r#"
CREATE TABLE cards (
    token      TEXT PRIMARY KEY,
    household  TEXT NOT NULL,
    issued_ms  INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX cards_household ON cards (household);
CREATE TABLE card_requests (
    tracking  TEXT PRIMARY KEY,
    token     TEXT NOT NULL,
    household TEXT NOT NULL,
    demand    TEXT NOT NULL,
    at_ms     INTEGER NOT NULL
);
CREATE INDEX card_requests_token ON card_requests (token);
"#;

/// [`CARDS_SCHEMA`] in PostgreSQL's types (migration 10 of PostgreSQL).
pub const CARDS_SCHEMA_PG: &str = r#"
CREATE TABLE cards (
    token      TEXT PRIMARY KEY,
    household  TEXT NOT NULL,
    issued_ms  BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX cards_household ON cards (household);
CREATE TABLE card_requests (
    tracking  TEXT PRIMARY KEY,
    token     TEXT NOT NULL,
    household TEXT NOT NULL,
    demand    TEXT NOT NULL,
    at_ms     BIGINT NOT NULL
);
CREATE INDEX card_requests_token ON card_requests (token);
"#;

/// The login of the service that writes residents' requests (it has no password and no
/// phone: it never signs in).
pub const CARD_SERVICE_LOGIN: &str = "service:card";

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `n` random characters of Crockford base32.
fn random_code(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect()
}

/// Whether `s` could be a token or tracking number of `n` characters (checked before any
/// lookup, so that junk never reaches the database).
fn well_formed(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A tracking number as typed (`k7q3m-pa2xz`, with or without the dash) in its stored form.
pub fn tracking_of(typed: &str) -> Option<String> {
    let t: String = typed
        .trim()
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    well_formed(&t, 10).then_some(t)
}

/// A tracking number as a person reads it.
pub fn tracking_shown(t: &str) -> String {
    if t.len() == 10 {
        format!("{}-{}", &t[..5], &t[5..])
    } else {
        t.to_string()
    }
}

impl AccessDb {
    /// The household's card token in force, issuing one if it has none.
    pub fn card_of(&self, household: HouseholdId) -> Result<String> {
        let h = household.to_string();
        let current = |db: &crate::sql::Db| -> Result<Option<String>> {
            Ok(db.row(
                "SELECT token FROM cards WHERE household = ?1 AND revoked_ms IS NULL
                  ORDER BY issued_ms DESC, token LIMIT 1",
                &[&h],
            )?)
        };
        if let Some(t) = current(&self.db)? {
            return Ok(t);
        }
        self.db.transaction(|tx| {
            if let Some(t) = current(tx)? {
                return Ok(t);
            }
            let token = random_code(26);
            tx.execute(
                "INSERT INTO cards (token, household, issued_ms) VALUES (?1, ?2, ?3)",
                &[&token, &h, &now_ms()],
            )?;
            Ok(token)
        })
    }

    /// Reissues the household's card: the token in force stops working and a new one is
    /// issued (returned).
    pub fn reissue_card(&self, household: HouseholdId) -> Result<String> {
        let h = household.to_string();
        self.db.transaction(|tx| {
            let now = now_ms();
            tx.execute(
                "UPDATE cards SET revoked_ms = ?2 WHERE household = ?1 AND revoked_ms IS NULL",
                &[&h, &now],
            )?;
            let token = random_code(26);
            tx.execute(
                "INSERT INTO cards (token, household, issued_ms) VALUES (?1, ?2, ?3)",
                &[&token, &h, &now],
            )?;
            Ok(token)
        })
    }

    /// The household of a card token in force (`None`: no such token, or it was reissued).
    pub fn card_household(&self, token: &str) -> Result<Option<HouseholdId>> {
        if !well_formed(token, 26) {
            return Ok(None);
        }
        let h: Option<String> = self.db.row(
            "SELECT household FROM cards WHERE token = ?1 AND revoked_ms IS NULL",
            &[&token],
        )?;
        Ok(h.and_then(|h| h.parse().ok()))
    }

    /// Records a request left through card `token` as `demand`; returns its new tracking
    /// number.
    pub fn record_card_request(
        &self,
        token: &str,
        household: HouseholdId,
        demand: DemandId,
    ) -> Result<String> {
        let tracking = random_code(10);
        self.db.execute(
            "INSERT INTO card_requests (tracking, token, household, demand, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                &tracking,
                &token,
                &household.to_string(),
                &demand.to_string(),
                &now_ms(),
            ],
        )?;
        Ok(tracking)
    }

    /// The demand a tracking number stands for, if it was left through a card of the same
    /// household as `token` (a reissued card's requests stay trackable on the new one).
    pub fn card_request(
        &self,
        household: HouseholdId,
        tracking: &str,
    ) -> Result<Option<(DemandId, i64)>> {
        let found: Option<(String, i64)> = self.db.row(
            "SELECT demand, at_ms FROM card_requests WHERE tracking = ?1 AND household = ?2",
            &[&tracking, &household.to_string()],
        )?;
        Ok(found.and_then(|(d, at)| Some((d.parse().ok()?, at))))
    }

    /// The user residents' requests are written as, created the first time.
    pub fn card_service_user(&self) -> Result<UserId> {
        match self.user_by_login(CARD_SERVICE_LOGIN) {
            Ok(u) => Ok(u),
            Err(AccessError::NotFound(_)) => {
                match self.add_user(CARD_SERVICE_LOGIN, "便民服务卡") {
                    Ok(u) => Ok(u),
                    // Another server created it meanwhile.
                    Err(AccessError::Invalid(_)) => self.user_by_login(CARD_SERVICE_LOGIN),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_of_the_alphabet_and_tracking_numbers_read_back_as_typed() {
        let t = random_code(26);
        assert!(well_formed(&t, 26), "{t}");
        assert_ne!(t, random_code(26));
        let n = random_code(10);
        let shown = tracking_shown(&n);
        assert_eq!(tracking_of(&shown).as_deref(), Some(n.as_str()));
        assert_eq!(
            tracking_of(&shown.to_lowercase()).as_deref(),
            Some(n.as_str())
        );
        for bad in ["", "12345", "ABCDE-FGHIU", "ABCDE-FGHIJK", "<script>"] {
            assert_eq!(tracking_of(bad), None, "{bad}");
        }
    }
}
