//! The one error type apps see, mapped from client-core's rich errors in one place. Messages
//! name the kind of failure only, never residents' data.

use qiaomen_client_core::{StoreError, SyncError};
use qiaomen_protocol::DocError;

/// What went wrong, in terms an app can act on.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum QiaomenError {
    /// No answer from the server: keep working offline, retry later. `failure` says how it
    /// failed, by a stable code: `unreachable` (no connection could be made: no signal, or
    /// the server is down), `stalled` (connected, then nothing moved for the stall time),
    /// `cut` (the connection closed mid-transfer), `refused` (the server was busy every time).
    /// What was acknowledged before stays acknowledged; the next `sync` resumes.
    #[error("network: {reason}")]
    Network { failure: String, reason: String },
    /// Not enrolled, or the server does not accept these credentials (a wrong, used or
    /// expired enrollment code; an unknown token). Nothing was changed.
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String },
    /// The server revoked this device. The user's data has been wiped from the phone; show
    /// the enrollment screen.
    #[error("revoked: {reason}")]
    Revoked { reason: String },
    /// An administrator retired this device (a handover). `wiped`: everything it held reached
    /// the server and the user's data has been wiped from the phone; show the enrollment
    /// screen. Not `wiped`: some changes or task reports were not accepted yet and stay on the
    /// phone (see `pending_change_count`, `rejected_changes`); sync again later, or hand the
    /// phone back to the administrator.
    #[error("retired: {reason}")]
    Retired { wiped: bool, reason: String },
    /// The server refused the request for another reason.
    #[error("server: {reason}")]
    Server { reason: String },
    /// The phone's storage failed (disk full, corrupt file, or an encrypted store opened
    /// without its key).
    #[error("storage: {reason}")]
    Storage { reason: String },
    /// The key does not open this encrypted store (the keystore lost or replaced it, or the
    /// file is not a store). The file is unchanged: open it again with the right key; a store
    /// whose key is gone cannot be read by anyone, so enroll a new one.
    #[error("wrong key: {reason}")]
    WrongKey { reason: String },
    /// The input is not acceptable (bad id, date, value, or an edit the record refuses).
    /// Nothing was stored. When a field rule refused a value (SYNC-v1 §13.8), `invalid_field`
    /// names the field and `rule` the rule by their stable codes (`note` / `too_long`,
    /// `member_id_number` / `id_check_digit`, ...): show the worker which field to correct.
    #[error("invalid input: {reason}")]
    InvalidInput {
        reason: String,
        invalid_field: Option<String>,
        rule: Option<String>,
    },
    /// The server's rules (SYNC-v1 §6.4), run on the phone, refuse the edit: this user may
    /// not make it. Nothing was stored. `what` names what was refused by its stable code
    /// (`household`: a grid the user may not write; `grid`: moving the household; `status`;
    /// `members` / `visits`: deleting one, or a colleague's visit; `demands`; `demand_step`:
    /// a work-order step the role may not take; `reviews`), `code` the reject code the
    /// server would answer (`out_of_scope`, `not_allowed`, `stale_order`): show the worker
    /// that a supervisor must do it.
    #[error("not allowed: {reason}")]
    NotAllowed {
        reason: String,
        what: String,
        code: String,
    },
    /// No such household, visit, demand or field.
    #[error("not found: {reason}")]
    NotFound { reason: String },
}

impl From<DocError> for QiaomenError {
    fn from(e: DocError) -> Self {
        let message = e.to_string();
        match e {
            DocError::NotFound { .. } => QiaomenError::NotFound { reason: message },
            DocError::Field(f) => QiaomenError::InvalidInput {
                reason: message,
                invalid_field: Some(f.field.code().into()),
                rule: Some(f.rule.code().into()),
            },
            DocError::InvalidEdit(_) | DocError::Schema(_) | DocError::TooNew { .. } => {
                QiaomenError::invalid(message)
            }
            DocError::Corrupt | DocError::Poisoned | DocError::Automerge(_) => {
                QiaomenError::Storage { reason: message }
            }
        }
    }
}

impl From<StoreError> for QiaomenError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Document(d) => d.into(),
            StoreError::NotFound { .. } => QiaomenError::NotFound { reason: message },
            StoreError::WrongKey => QiaomenError::WrongKey { reason: message },
            StoreError::AlreadyExists { .. }
            | StoreError::AlreadyEnrolled
            | StoreError::BadKey { .. } => QiaomenError::invalid(message),
            StoreError::NotAllowed { what, code } => QiaomenError::NotAllowed {
                reason: message,
                what: what.code().into(),
                code: code.name(),
            },
            StoreError::NotEnrolled | StoreError::WrongUser => {
                QiaomenError::Unauthorized { reason: message }
            }
            StoreError::CorruptStore
            | StoreError::CorruptDocument { .. }
            | StoreError::TooNew { .. }
            | StoreError::InUse
            | StoreError::Io(_)
            | StoreError::Sqlite(_) => QiaomenError::Storage { reason: message },
        }
    }
}

impl From<SyncError> for QiaomenError {
    fn from(e: SyncError) -> Self {
        let message = e.to_string();
        match e {
            SyncError::Network { failure, .. } => QiaomenError::Network {
                failure: failure.code().to_string(),
                reason: message,
            },
            SyncError::Server {
                status: 401 | 403, ..
            }
            | SyncError::Unauthorized { .. } => QiaomenError::Unauthorized { reason: message },
            // A photo the server holds for no household this phone may read.
            SyncError::Server { status: 404, .. } => QiaomenError::NotFound { reason: message },
            SyncError::Revoked => QiaomenError::Revoked { reason: message },
            SyncError::Retired { wiped } => QiaomenError::Retired {
                wiped,
                reason: message,
            },
            SyncError::Server { .. } | SyncError::Protocol(_) => {
                QiaomenError::Server { reason: message }
            }
            SyncError::Store(s) => s.into(),
            SyncError::BadCertificate => QiaomenError::invalid(message),
        }
    }
}

/// Parses an id or date from the app, as `InvalidInput` when it is not one.
pub(crate) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, QiaomenError> {
    s.parse()
        .map_err(|_| QiaomenError::invalid(format!("not a valid {what}")))
}

impl QiaomenError {
    /// `InvalidInput` that no one field rule refused.
    pub(crate) fn invalid(reason: String) -> Self {
        QiaomenError::InvalidInput {
            reason,
            invalid_field: None,
            rule: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use qiaomen_protocol::{
        policy::Subject,
        validate::{Field, FieldError, Rule},
        wire::RejectCode,
    };

    use super::*;

    #[test]
    fn a_refusal_by_the_rules_reaches_the_app_as_not_allowed_naming_what() {
        let e: QiaomenError = StoreError::NotAllowed {
            what: Subject::DemandStep,
            code: RejectCode::NotAllowed,
        }
        .into();
        match e {
            QiaomenError::NotAllowed { reason, what, code } => {
                assert_eq!(
                    (what.as_str(), code.as_str()),
                    ("demand_step", "not_allowed")
                );
                assert!(reason.contains("demand_step"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_field_rule_reaches_the_app_as_invalid_input_naming_the_field_not_the_value() {
        let e: QiaomenError = StoreError::Document(DocError::Field(FieldError {
            field: Field::MemberIdNumber,
            rule: Rule::IdCheckDigit,
        }))
        .into();
        match e {
            QiaomenError::InvalidInput {
                reason,
                invalid_field,
                rule,
            } => {
                assert_eq!(invalid_field.as_deref(), Some("member_id_number"));
                assert_eq!(rule.as_deref(), Some("id_check_digit"));
                assert!(reason.contains("member_id_number"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
