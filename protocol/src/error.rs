//! Errors of the document layer. Messages never contain residents' data: they name the kind
//! of failure and, at most, ids.

/// What went wrong reading or changing a household document.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// The bytes are not a valid Automerge document or change (truncated, corrupted, hostile).
    #[error("the document bytes are corrupt or truncated")]
    Corrupt,
    /// The document is valid Automerge but does not hold a household record.
    #[error("the document does not match the household schema: {0}")]
    Schema(String),
    /// The document was written by a newer schema than this build understands.
    #[error("the document has schema version {found}, newer than this build's {supported}")]
    TooNew { found: u64, supported: u64 },
    /// A change names an entity the document does not have.
    #[error("no {kind} with id {id} in this household")]
    NotFound { kind: &'static str, id: String },
    /// The edit is not allowed by the record's rules (e.g. a demand moved from Raised to Closed).
    #[error("invalid edit: {0}")]
    InvalidEdit(String),
    /// A value breaks a field rule or a limit ([`crate::validate`]): names the field and the
    /// rule, never the value.
    #[error("invalid field: {0}")]
    Field(#[from] crate::validate::FieldError),
    /// Automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(String),
    /// Automerge panicked on input; the in-memory document must be discarded and reloaded.
    #[error("the document engine failed on this input; the document must be reloaded")]
    Poisoned,
}

impl From<automerge::AutomergeError> for DocError {
    fn from(e: automerge::AutomergeError) -> Self {
        match e {
            automerge::AutomergeError::Load(_) => DocError::Corrupt,
            other => DocError::Automerge(other.to_string()),
        }
    }
}

impl From<autosurgeon::HydrateError> for DocError {
    fn from(e: autosurgeon::HydrateError) -> Self {
        // Hydrate errors name the expected shape and what was found; the "found" part can
        // quote a value, so keep only the shape.
        DocError::Schema(first_clause(&e.to_string()))
    }
}

impl From<autosurgeon::ReconcileError> for DocError {
    fn from(e: autosurgeon::ReconcileError) -> Self {
        DocError::Automerge(first_clause(&e.to_string()))
    }
}

impl DocError {
    /// The code a server refuses a change with when validating it gives this error: a field
    /// rule's `invalid_field`, else `schema_violation`.
    pub fn reject_code(&self) -> crate::wire::RejectCode {
        match self {
            DocError::Field(_) => crate::wire::RejectCode::InvalidField,
            _ => crate::wire::RejectCode::SchemaViolation,
        }
    }
}

fn first_clause(s: &str) -> String {
    // Keep the error's kind, drop any quoted value after a colon.
    s.split(':').next().unwrap_or("").trim().to_string()
}

pub type Result<T, E = DocError> = std::result::Result<T, E>;
