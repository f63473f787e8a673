//! Databases on object storage (`s3://bucket/prefix`, `gs://`, `az://`; for tests,
//! `memory://name` in one process and `objectfs:///folder`, a local folder used through the
//! object-store protocol, across processes) through the `object_store` crate.
//!
//! The store holds the database's own layout under its prefix (`_versions/`, `files/`). Each
//! process works on a local cache folder with the same layout, which the rest of the crate reads
//! as a local database:
//! - manifests are copied in when versions are listed;
//! - a data file is copied in when a snapshot first reads it (FAISS and the columns need local
//!   files to map); immutable files under unique names make the cache safe without
//!   invalidation, and the checksums are verified on load as for any file;
//! - a commit uploads its new files, then creates the next manifest only if no writer created
//!   it first (`PutMode::Create`: `If-None-Match: *` on S3). That compare-and-swap decides
//!   between writers on different machines; the loser gets [`Error::Conflict`] and nothing of
//!   its commit is visible.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::fsio;
use crate::manifest::{FILES_DIR, VERSIONS_DIR};

/// The URI schemes that name a database on object storage.
const SCHEMES: [&str; 8] = [
    "s3://",
    "s3a://",
    "gs://",
    "az://",
    "azure://",
    "abfss://",
    "memory://",
    "objectfs://",
];

/// Whether `location` names a database on object storage rather than a local folder.
pub fn is_remote(location: &str) -> bool {
    SCHEMES.iter().any(|s| location.starts_with(s))
}

/// In-process stores of `memory://name` URIs, shared by every handle that names them (tests
/// run several "machines" in one process).
fn memory_store(name: &str) -> Arc<InMemory> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    stores.entry(name.to_string()).or_default().clone()
}

/// A database's object store: where its objects are, and the runtime its requests run on.
pub(crate) struct Remote {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("uri", &self.uri).finish()
    }
}

impl Remote {
    /// Connects to the store `uri` names. Credentials and endpoints come from the environment
    /// as each store's SDK reads them (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    pub(crate) fn open(uri: &str) -> Result<Remote> {
        let bad = |detail: String| Error::Remote {
            uri: uri.to_string(),
            detail,
        };
        let url = url::Url::parse(uri).map_err(|e| bad(format!("not a URI: {e}")))?;
        let prefix = if url.scheme() == "objectfs" {
            ObjectPath::default()
        } else {
            ObjectPath::parse(url.path().trim_matches('/'))
                .map_err(|e| bad(format!("bad path: {e}")))?
        };
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "memory" => memory_store(url.host_str().unwrap_or_default()),
            "objectfs" => {
                let root = std::path::PathBuf::from(url.path());
                fsio::create_dir(&root)?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&root)
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(uri)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(uri)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "azure" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(uri)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown scheme '{other}'; expected s3://, gs://, az://, memory:// or \
                     objectfs://"
                )));
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mirante-object-store")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Remote {
            uri: uri.to_string(),
            store,
            prefix,
            runtime,
        })
    }

    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Remote {
            uri: self.uri.clone(),
            detail: format!("{what}: {e}"),
        }
    }

    /// The object of `dir/name` under the database's prefix.
    fn key(&self, dir: &str, name: &str) -> ObjectPath {
        self.prefix.clone().join(dir).join(name)
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Committed versions in the store, ascending.
    pub(crate) fn versions(&self) -> Result<Vec<u64>> {
        let dir = self.prefix.clone().join(VERSIONS_DIR);
        let listed = self
            .block_on(self.store.list_with_delimiter(Some(&dir)))
            .map_err(|e| self.error("listing versions", e))?;
        let mut versions: Vec<u64> = listed
            .objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_suffix(".manifest")?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Copies the store's manifests that the cache at `root` lacks into it; returns the
    /// store's versions.
    pub(crate) fn sync_manifests(&self, root: &Path) -> Result<Vec<u64>> {
        let versions = self.versions()?;
        let local: std::collections::HashSet<u64> =
            crate::manifest::list_versions(root)?.into_iter().collect();
        for &v in versions.iter().filter(|v| !local.contains(v)) {
            let name = crate::manifest::file_name(v);
            let bytes = self
                .block_on(async {
                    self.store
                        .get(&self.key(VERSIONS_DIR, &name))
                        .await?
                        .bytes()
                        .await
                })
                .map_err(|e| self.error(&format!("reading manifest {name}"), e))?;
            fsio::atomic_write(&root.join(VERSIONS_DIR).join(&name), &[&bytes])?;
        }
        Ok(versions)
    }

    /// Creates the manifest of `version` unless it exists; `false` when another writer created
    /// it first.
    pub(crate) fn create_manifest(&self, version: u64, bytes: Vec<u8>) -> Result<bool> {
        let name = crate::manifest::file_name(version);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.block_on(self.store.put_opts(
            &self.key(VERSIONS_DIR, &name),
            PutPayload::from(bytes),
            options,
        )) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.error(&format!("creating manifest {name}"), e)),
        }
    }

    /// Copies data file `name` of `len` bytes into the cache at `local`, unless it is there.
    pub(crate) fn fetch(&self, name: &str, len: u64, local: &Path) -> Result<()> {
        if std::fs::metadata(local).is_ok_and(|m| m.len() == len) {
            return Ok(());
        }
        let bytes = self
            .block_on(async {
                self.store
                    .get(&self.key(FILES_DIR, name))
                    .await?
                    .bytes()
                    .await
            })
            .map_err(|e| self.error(&format!("reading {name}"), e))?;
        if bytes.len() as u64 != len {
            return Err(Error::corruption(
                local,
                format!(
                    "the object store holds {} bytes, the manifest committed {len}",
                    bytes.len()
                ),
            ));
        }
        fsio::atomic_write(local, &[&bytes])
    }

    /// Uploads the cache's file `name` (at `local`) unless the store holds it with its length.
    /// Names are unique, so an object already there is this file uploaded before.
    pub(crate) fn upload(&self, name: &str, local: &Path) -> Result<()> {
        let key = self.key(FILES_DIR, name);
        let len = fsio::metadata(local)?.len();
        if let Ok(meta) = self.block_on(self.store.head(&key))
            && meta.size == len
        {
            return Ok(());
        }
        let mut file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
        let store = self.store.clone();
        self.block_on(async move {
            let mut writer = object_store::buffered::BufWriter::new(store, key);
            let mut buffer = vec![0u8; 8 << 20];
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                writer.write_all(&buffer[..n]).await?;
            }
            writer.shutdown().await
        })
        .map_err(|e| self.error(&format!("uploading {name}"), e))
    }

    /// Length of data file `name` in the store, if it is there.
    pub(crate) fn file_len(&self, name: &str) -> Result<Option<u64>> {
        match self.block_on(self.store.head(&self.key(FILES_DIR, name))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&format!("looking up {name}"), e)),
        }
    }

    /// Data files in the store: name, length, last modified.
    pub(crate) fn files(&self) -> Result<Vec<(String, u64, SystemTime)>> {
        let dir = self.prefix.clone().join(FILES_DIR);
        let objects: Vec<object_store::ObjectMeta> = self
            .block_on(self.store.list(Some(&dir)).try_collect())
            .map_err(|e| self.error("listing files", e))?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                let name = o.location.filename()?.to_string();
                Some((name, o.size, SystemTime::from(o.last_modified)))
            })
            .collect())
    }

    /// Removes `dir/name` from the store (gone already is fine).
    pub(crate) fn delete(&self, dir: &str, name: &str) -> Result<()> {
        match self.block_on(self.store.delete(&self.key(dir, name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&format!("deleting {dir}/{name}"), e)),
        }
    }
}

/// The local cache folder of `uri`: `$MIRANTE_CACHE_DIR`, else `$XDG_CACHE_HOME/mirante`, else
/// `~/.cache/mirante`, then a folder named after the URI.
pub(crate) fn default_cache(uri: &str) -> std::path::PathBuf {
    let base = std::env::var_os("MIRANTE_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("mirante")))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mirante")))
        .unwrap_or_else(|| std::env::temp_dir().join("mirante-cache"));
    let readable: String = uri
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    base.join(format!("{readable}-{:08x}", crc32c::crc32c(uri.as_bytes())))
}
