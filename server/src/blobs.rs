//! The photo store: photos' bytes by content hash, behind `object_store`'s [`ObjectStore`]:
//! files under `<data-dir>/photos` (the embedded default) or an S3-compatible bucket
//! (`--photos s3://bucket/prefix`, for several servers).
//!
//! Keys (SYNC-v1 §14.3):
//! - `photos/<hash>`: a complete photo, stored only once its bytes were checked (SHA-256 and
//!   [`qiaomen_protocol::validate::photo_bytes`]);
//! - `partial/<hash>/<offset, 16 digits>`: a piece of an upload under way, from that offset.
//!   What the server holds of an upload is how far its pieces cover it from 0, read
//!   from a listing, so every server of a bucket sees the same and none keeps it in memory;
//! - `thumbs/<hash>.jpg`: the pages' thumbnail, made on first request ([`crate::thumbs`]).
//!
//! Nothing here is in memory between calls: several servers on one bucket agree by the
//! bucket. Two servers taking the same piece write the same key with the same bytes; two
//! finishing the same photo put the same checked bytes.

use std::{path::Path, sync::Arc};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as Key};

/// A failure of the photo store. Messages name the operation and a hash, never bytes.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("photo store: {0}")]
    Store(#[from] object_store::Error),
    #[error("photo store setup: {0}")]
    Setup(String),
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Where an S3-compatible bucket is and how to sign in to it.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// Another endpoint than AWS's (`QIAOMEN_S3_ENDPOINT`); plain HTTP is allowed only to
    /// this machine (a test server).
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Default `us-east-1`.
    pub region: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// `url`, with the endpoint, keys and region from `QIAOMEN_S3_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`.
    pub fn from_env(url: &str) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            url: url.to_string(),
            endpoint: var("QIAOMEN_S3_ENDPOINT"),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
        }
    }
}

/// What the store holds of a photo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Complete, of this many bytes.
    Complete(u64),
    /// An upload under way: this many bytes from 0 (0: nothing).
    Partial(u64),
}

/// The photo store.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// Files under `dir` (made if missing).
    pub fn local(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobError::Setup(format!("creating {}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// An S3-compatible bucket ([`S3Settings`]).
    pub fn s3(settings: &S3Settings) -> Result<Self> {
        let rest = settings
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::Setup("--photos takes s3://bucket/prefix".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BlobError::Setup("--photos s3:// needs a bucket".into()));
        }
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.as_deref().unwrap_or("us-east-1"));
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_allow_http(loopback_http(endpoint))
                .with_endpoint(endpoint);
        }
        let s3 = builder.build()?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Self { store })
    }

    /// What the store holds of photo `hash` (a checked hash: [`qiaomen_protocol::photo::is_hash`]).
    pub async fn held(&self, hash: &str) -> Result<Held> {
        match self.store.head(&complete(hash)).await {
            Ok(meta) => return Ok(Held::Complete(meta.size)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Held::Partial(contiguous(&self.pieces(hash).await?).1))
    }

    /// Whether the complete photo `hash` is here (one request).
    pub async fn is_complete(&self, hash: &str) -> Result<bool> {
        match self.store.head(&complete(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The pieces of an upload of `hash` under way, by offset: (offset, size, key).
    async fn pieces(&self, hash: &str) -> Result<Vec<(u64, u64, Key)>> {
        let listed = match self
            .store
            .list_with_delimiter(Some(&partial_dir(hash)))
            .await
        {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut pieces: Vec<(u64, u64, Key)> = listed
            .into_iter()
            .filter_map(|m| {
                let offset = m.location.filename()?.parse().ok()?;
                Some((offset, m.size, m.location))
            })
            .collect();
        pieces.sort_by_key(|p| p.0);
        Ok(pieces)
    }

    /// Stores a piece of an upload of `hash` from `offset`.
    pub async fn put_piece(&self, hash: &str, offset: u64, bytes: bytes::Bytes) -> Result<()> {
        self.store
            .put(&piece(hash, offset), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// The bytes of the upload of `hash` under way, its contiguous pieces from 0.
    pub async fn assembled(&self, hash: &str) -> Result<Vec<u8>> {
        let pieces = self.pieces(hash).await?;
        let (used, total) = contiguous(&pieces);
        let mut out = Vec::with_capacity(total as usize);
        for (key, skip) in used {
            let bytes = self.store.get(key).await?.bytes().await?;
            out.extend_from_slice(bytes.get(skip as usize..).unwrap_or_default());
        }
        // A piece shorter than its listing (rewritten meanwhile) leaves a gap: the phone's
        // next `HEAD` resumes from the listing again; the hash check refuses what is not whole.
        Ok(out)
    }

    /// Keeps `bytes` (checked) as the complete photo `hash` and drops its pieces.
    pub async fn complete(&self, hash: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&complete(hash), PutPayload::from(bytes))
            .await?;
        self.discard(hash).await
    }

    /// Drops every piece of the upload of `hash` under way.
    pub async fn discard(&self, hash: &str) -> Result<()> {
        for (_, _, key) in self.pieces(hash).await? {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Drops every upload under way none of whose pieces was written in the last `idle`, and
    /// answers how many. A phone that comes back later starts that photo again from 0 (its
    /// `HEAD` says so); nothing of a complete photo is touched. Several servers sweeping one
    /// bucket at once delete the same keys, which is harmless.
    pub async fn sweep_uploads(&self, idle: std::time::Duration) -> Result<usize> {
        let before = crate::access::now_ms().saturating_sub(idle.as_millis() as i64);
        let uploads = match self
            .store
            .list_with_delimiter(Some(&Key::from(PARTIAL)))
            .await
        {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut swept = 0;
        for dir in uploads {
            let Some(hash) = dir
                .filename()
                .filter(|h| qiaomen_protocol::photo::is_hash(h))
            else {
                continue;
            };
            let newest = match self.store.list_with_delimiter(Some(&dir)).await {
                Ok(l) => l
                    .objects
                    .iter()
                    .map(|m| m.last_modified.timestamp_millis())
                    .max(),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            if newest.is_some_and(|at| at < before) {
                self.discard(hash).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// The complete photo `hash`, if the store holds it.
    pub async fn photo(&self, hash: &str) -> Result<Option<bytes::Bytes>> {
        self.read(&complete(hash)).await
    }

    /// The thumbnail of photo `hash`, if one was made.
    pub async fn thumb(&self, hash: &str) -> Result<Option<bytes::Bytes>> {
        self.read(&thumb(hash)).await
    }

    /// Keeps the thumbnail of photo `hash`.
    pub async fn put_thumb(&self, hash: &str, jpeg: Vec<u8>) -> Result<()> {
        self.store.put(&thumb(hash), PutPayload::from(jpeg)).await?;
        Ok(())
    }

    async fn read(&self, key: &Key) -> Result<Option<bytes::Bytes>> {
        match self.store.get(key).await {
            Ok(got) => Ok(Some(got.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn complete(hash: &str) -> Key {
    Key::from(format!("photos/{hash}"))
}

/// How long an upload under way is kept with no piece written (SYNC-v1 §14.3).
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Sweeps the uploads idle longer than [`UPLOAD_IDLE`] now and then every hour, for as long
/// as the server runs. A failed sweep is logged and tried at the next hour.
pub async fn sweep_in_background(blobs: Arc<Blobs>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        match blobs.sweep_uploads(UPLOAD_IDLE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "incomplete photo uploads dropped"),
            Err(e) => tracing::warn!(error = %e, "sweeping incomplete photo uploads failed"),
        }
    }
}

/// The folder of uploads under way.
const PARTIAL: &str = "partial";

fn partial_dir(hash: &str) -> Key {
    Key::from(format!("{PARTIAL}/{hash}"))
}

fn piece(hash: &str, offset: u64) -> Key {
    Key::from(format!("partial/{hash}/{offset:016}"))
}

fn thumb(hash: &str) -> Key {
    Key::from(format!("thumbs/{hash}.jpg"))
}

/// Of pieces sorted by offset, the ones that cover the photo from 0 without a gap — each
/// with how many of its first bytes an earlier piece already covers — and the bytes covered.
/// A piece wholly inside the covered bytes is skipped; one that overlaps its end counts from
/// there. Overlaps come from races a phone cannot see: a piece kept from a cut body while the
/// phone resumed from an older offset, two servers taking pieces of one upload at once. Each
/// piece is the photo's bytes at its offset (else the hash check at completion refuses the
/// upload), so where two overlap they hold the same bytes.
fn contiguous(pieces: &[(u64, u64, Key)]) -> (Vec<(&Key, u64)>, u64) {
    let mut end = 0;
    let mut used = Vec::new();
    for (offset, size, key) in pieces {
        if *offset > end {
            break;
        }
        if offset + size > end {
            used.push((key, end - offset));
            end = offset + size;
        }
    }
    (used, end)
}

/// Whether `endpoint` is plain HTTP to this machine (a test server).
fn loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or("");
    host == "127.0.0.1" || host == "localhost" || rest.starts_with("[::1]")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn pieces_count_from_zero_while_contiguous_and_a_completed_photo_drops_them() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::local(&dir.path().join("photos")).expect("store");
        let hash = qiaomen_protocol::photo::hash_of(b"0123456789");
        run(async {
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Partial(0));
            blobs.put_piece(&hash, 0, "0123".into()).await.unwrap();
            blobs.put_piece(&hash, 8, "89".into()).await.unwrap();
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Partial(4));
            // Overlapping pieces (a cut piece kept while the phone resumed from before it)
            // count from where the bytes before them end.
            blobs.put_piece(&hash, 2, "2345".into()).await.unwrap();
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Partial(6));
            blobs.put_piece(&hash, 3, "3".into()).await.unwrap();
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Partial(6));
            blobs.put_piece(&hash, 4, "4567".into()).await.unwrap();
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Partial(10));
            let bytes = blobs.assembled(&hash).await.unwrap();
            assert_eq!(bytes, b"0123456789");
            blobs.complete(&hash, bytes).await.unwrap();
            assert_eq!(blobs.held(&hash).await.unwrap(), Held::Complete(10));
            assert!(blobs.pieces(&hash).await.unwrap().is_empty());
            assert_eq!(
                blobs.photo(&hash).await.unwrap().as_deref(),
                Some(&b"0123456789"[..])
            );
        });
        assert!(
            !dir.path().join("photos/partial").join(&hash).exists(),
            "no empty folder is left"
        );
    }

    #[test]
    fn a_sweep_drops_only_uploads_idle_longer_than_it_is_told() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::local(&dir.path().join("photos")).expect("store");
        let (idle, busy, done) = (
            qiaomen_protocol::photo::hash_of(b"idle"),
            qiaomen_protocol::photo::hash_of(b"busy"),
            qiaomen_protocol::photo::hash_of(b"done"),
        );
        run(async {
            assert_eq!(blobs.sweep_uploads(Duration::ZERO).await.unwrap(), 0);
            blobs.put_piece(&idle, 0, "id".into()).await.unwrap();
            blobs.complete(&done, b"done".to_vec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1200)).await;
            blobs.put_piece(&busy, 0, "bu".into()).await.unwrap();
            // Only the upload with no piece in the last second goes.
            assert_eq!(
                blobs.sweep_uploads(Duration::from_secs(1)).await.unwrap(),
                1
            );
            assert_eq!(blobs.held(&idle).await.unwrap(), Held::Partial(0));
            assert_eq!(blobs.held(&busy).await.unwrap(), Held::Partial(2));
            assert_eq!(blobs.held(&done).await.unwrap(), Held::Complete(4));
            assert_eq!(blobs.sweep_uploads(Duration::ZERO).await.unwrap(), 1);
            assert_eq!(blobs.held(&busy).await.unwrap(), Held::Partial(0));
            assert_eq!(blobs.held(&done).await.unwrap(), Held::Complete(4));
        });
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        assert!(loopback_http("http://127.0.0.1:5555"));
        assert!(loopback_http("http://localhost:9000/"));
        assert!(!loopback_http("http://s3.example.org"));
        assert!(!loopback_http("https://127.0.0.1"));
    }
}
