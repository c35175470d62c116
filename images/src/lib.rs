//! frakti's image service: pulls images from OCI registries (with mirrors
//! configured in containerd's `hosts.toml` layout), keeps their blobs in a
//! digest-verified content store, unpacks their layers into snapshots that
//! can be shared into a VM, and keeps an index of images that survives a
//! restart. Unreferenced blobs and snapshots are garbage-collected.
//!
//! On-disk layout under `<root>/images/`:
//! `blobs/sha256/<hex>` (content), `snapshots/<chain-id hex>/` (a layer
//! chain's root filesystem), `index/<image-id hex>.json` (image records),
//! `tmp/` (downloads and snapshots in progress; emptied at start).
//!
//! This crate owns registry access, the content store, the snapshots and the
//! image index. It knows nothing of the CRI, pods, containers or VMs: callers
//! map its [`Image`] records and [`PullError`]s onto their own API, and decide
//! how a snapshot reaches a guest.

pub mod hosts;
mod pull;
pub mod snapshot;
pub mod store;
pub mod unpack;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};

pub use hosts::{Endpoint, Hosts, HostsError};
pub use pull::{PullError, free_bytes};
pub use store::ContentStore;
pub use unpack::UnpackError;

/// Registry credentials for one pull.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum Credentials {
    /// No credentials.
    #[default]
    Anonymous,
    /// Username and password (also used for a bearer-token challenge).
    Basic {
        /// User name.
        username: String,
        /// Password or identity token.
        password: String,
    },
    /// A registry token sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => write!(f, "Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Image ID: the digest of its config.
    pub id: String,
    /// `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repository@digest` names.
    pub repo_digests: Vec<String>,
    /// Bytes of config and (compressed) layers.
    pub size: u64,
    /// Digest of the platform manifest.
    pub manifest: String,
    /// Digest of the index it was selected from, if any.
    pub index: Option<String>,
    /// Compressed layer digests, base first.
    pub layers: Vec<String>,
    /// Layer chain IDs, base first; the last names the image's root filesystem.
    pub chain_ids: Vec<String>,
    /// `User` from the image config (may be empty).
    pub user: String,
    /// Pull time, ns since the epoch (orders records at load).
    pub updated: u128,
}

/// Names of the snapshots under `snap_dir` that an overlay mount uses as a lower layer.
fn snapshots_in_use(snap_dir: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut names = HashSet::new();
    for line in text.lines() {
        let Some((_, fs)) = line.split_once(" - ") else {
            continue;
        };
        let mut f = fs.split(' ');
        if f.next() != Some("overlay") {
            continue;
        }
        let options = f.nth(1).unwrap_or_default();
        for opt in options.split(',') {
            let Some(lower) = opt.strip_prefix("lowerdir=") else {
                continue;
            };
            for dir in lower.split(':') {
                if let Ok(rest) = Path::new(dir).strip_prefix(snap_dir)
                    && let Some(first) = rest.components().next()
                {
                    names.insert(first.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
    }
    names
}

impl Image {
    /// The uid (`Some`) or user name (`Err`) the config's `User` names.
    pub fn user_id(&self) -> (Option<i64>, String) {
        let user = self.user.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_owned()),
        }
    }

    fn digests(&self) -> impl Iterator<Item = &String> {
        [&self.id, &self.manifest]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter())
    }
}

/// The image store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A directory cannot be created or read
    #[error("cannot prepare image store directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// An image record cannot be read
    #[error("cannot read image record {0}: {1}")]
    Record(PathBuf, String),
}

/// What one image may expand to unless configured: 20 GiB.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 20 << 30;

/// A reference names no image, nor could it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reference:?} is not an image reference: {reason}")]
pub struct BadReference {
    /// As given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether `reference` could name an image: an image ID (`sha256:` and 64
/// hex digits), a hex ID prefix, or a name Docker would accept.
pub fn check_reference(reference: &str) -> Result<(), BadReference> {
    let bad = |reason: String| BadReference {
        reference: reference.to_owned(),
        reason,
    };
    let r = reference.trim();
    if r.starts_with("sha256:") {
        return store::digest_hex(r)
            .map(|_| ())
            .map_err(|e| bad(e.to_string()));
    }
    if !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    match pull::parse_reference(r) {
        Ok(_) => Ok(()),
        Err(PullError::InvalidReference { reason, .. }) => Err(bad(reason)),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// An image could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Its record cannot be updated
    #[error("cannot update the image index: {0}")]
    Index(std::io::Error),
    /// The image is pinned by the configuration
    #[error("image {0} is pinned (config key pinned_images) and is not removed")]
    Pinned(String),
    /// The reference names no image, nor could it
    #[error(transparent)]
    InvalidReference(#[from] BadReference),
}

/// Image store usage could not be measured.
#[derive(Debug, thiserror::Error)]
#[error("cannot measure image store usage under {0}: {1}")]
pub struct FsInfoError(PathBuf, std::io::Error);

/// Usage of the image store's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes in blocks used by blobs, snapshots and records.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// Per-key async locks: one holder per blob digest or chain ID at a time.
#[derive(Debug, Default)]
struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = lock(&self.0);
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Digests and chain IDs a pull is working on: GC leaves them alone.
#[derive(Debug)]
struct InFlight {
    store: Arc<Inner>,
    keys: Vec<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = lock(&self.store.in_flight);
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
}

struct Inner {
    dir: PathBuf,
    content: ContentStore,
    hosts: Hosts,
    images: Mutex<BTreeMap<String, Image>>,
    in_flight: Mutex<HashMap<String, usize>>,
    locks: KeyedLocks,
    clients: Mutex<HashMap<(Endpoint, Credentials), oci_client::Client>>,
    /// References of the images that must not be removed.
    pinned: Vec<String>,
    /// Most bytes one image's layers may expand to (each layer, and all a
    /// pull writes).
    max_image_size: u64,
    /// Bumped whenever what the store holds changes (commit, removal, GC).
    generation: std::sync::atomic::AtomicU64,
    /// The usage last measured, with the generation it was measured at.
    usage: Mutex<Option<(u64, FsUsage)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The image store and puller. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

impl ImageStore {
    /// Opens the store under `<root>/images`, reading mirrors from `hosts_dir`.
    /// Leftovers of interrupted pulls are removed and unreferenced content collected.
    pub fn open(root: &Path, hosts_dir: Option<PathBuf>) -> Result<Self, OpenError> {
        let dir = root.join("images");
        let mk = |p: PathBuf| std::fs::create_dir_all(&p).map_err(|e| OpenError::Dir(p, e));
        mk(dir.join("index"))?;
        mk(dir.join("snapshots"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| OpenError::Dir(tmp.clone(), e))?;
        }
        let content = ContentStore::open(dir.join("blobs"), tmp.clone())
            .map_err(|e| OpenError::Dir(dir.join("blobs"), e))?;
        let mut images: BTreeMap<String, Image> = BTreeMap::new();
        let index = dir.join("index");
        let entries = std::fs::read_dir(&index).map_err(|e| OpenError::Dir(index.clone(), e))?;
        for entry in entries {
            let path = entry.map_err(|e| OpenError::Dir(index.clone(), e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                let _ = std::fs::remove_file(&path); // an interrupted write
                continue;
            }
            let text =
                std::fs::read(&path).map_err(|e| OpenError::Record(path.clone(), e.to_string()))?;
            let image: Image = serde_json::from_slice(&text)
                .map_err(|e| OpenError::Record(path.clone(), e.to_string()))?;
            if let Err(e) = store::digest_hex(&image.id) {
                return Err(OpenError::Record(path, e.to_string()));
            }
            images.insert(image.id.clone(), image);
        }
        // A tag moved between images and a crash came before both records
        // were written: the newer record keeps it.
        let mut owners: HashMap<String, (u128, String)> = HashMap::new();
        for img in images.values() {
            for t in img.repo_tags.iter().chain(&img.repo_digests) {
                let e = owners
                    .entry(t.clone())
                    .or_insert((img.updated, img.id.clone()));
                if img.updated > e.0 {
                    *e = (img.updated, img.id.clone());
                }
            }
        }
        for img in images.values_mut() {
            let id = img.id.clone();
            img.repo_tags
                .retain(|t| owners.get(t).is_none_or(|o| o.1 == id));
            img.repo_digests
                .retain(|t| owners.get(t).is_none_or(|o| o.1 == id));
        }
        let store = Self {
            inner: Arc::new(Inner {
                dir,
                content,
                hosts: Hosts::new(hosts_dir),
                images: Mutex::new(images),
                in_flight: Mutex::new(HashMap::new()),
                locks: KeyedLocks::default(),
                clients: Mutex::new(HashMap::new()),
                pinned: Vec::new(),
                max_image_size: DEFAULT_MAX_IMAGE_SIZE,
                generation: Default::default(),
                usage: Mutex::new(None),
            }),
        };
        let n = lock(&store.inner.images).len();
        match store.collect_garbage() {
            Ok((b, s)) => tracing::info!(
                images = n,
                removed_blobs = b,
                removed_snapshots = s,
                "image store ready"
            ),
            Err(e) => tracing::warn!("image store GC failed: {e}"),
        }
        Ok(store)
    }

    /// Pins the images `references` name: [`Self::remove`] refuses them.
    /// References that name no image yet pin the image once it is pulled.
    /// Call before the store is shared.
    pub fn with_pinned(mut self, references: Vec<String>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.pinned = references,
            None => tracing::error!("the image store is shared already; pins ignored"),
        }
        self
    }

    /// Caps what one image's layers may expand to, in bytes (default
    /// [`DEFAULT_MAX_IMAGE_SIZE`]). Call before the store is shared.
    pub fn with_max_image_size(mut self, bytes: u64) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.max_image_size = bytes,
            None => tracing::error!("the image store is shared already; size cap ignored"),
        }
        self
    }

    /// Whether `image` is pinned by the configuration.
    pub fn is_pinned(&self, image: &Image) -> bool {
        self.inner
            .pinned
            .iter()
            .any(|r| self.find(r).is_some_and(|found| found.id == image.id))
    }

    fn changed(&self) {
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The directory holding the store (`<root>/images`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The root filesystem of `image` (its top snapshot).
    pub fn rootfs(&self, image: &Image) -> Option<PathBuf> {
        let top = image.chain_ids.last()?;
        let hex = store::digest_hex(top).ok()?;
        Some(self.inner.dir.join("snapshots").join(hex))
    }

    /// The image's config as stored (JSON), for verbose status.
    pub fn config(&self, image: &Image) -> Option<serde_json::Value> {
        let bytes = self.inner.content.read(&image.id).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// All images.
    pub fn list(&self) -> Vec<Image> {
        lock(&self.inner.images).values().cloned().collect()
    }

    /// Finds an image by ID (`sha256:…`, its hex, or a unique hex prefix of at
    /// least 12 digits), by tag (normalised like Docker) or by repo digest.
    pub fn find(&self, reference: &str) -> Option<Image> {
        let images = lock(&self.inner.images);
        let r = reference.trim();
        if r.is_empty() {
            return None;
        }
        let id = if r.starts_with("sha256:") {
            r.to_owned()
        } else {
            format!("sha256:{r}")
        };
        if let Some(i) = images.get(&id) {
            return Some(i.clone());
        }
        if r.len() >= 12 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut m = images.values().filter(|i| {
                i.id.strip_prefix("sha256:")
                    .is_some_and(|hex| hex.starts_with(r))
            });
            if let (Some(one), None) = (m.next(), m.next()) {
                return Some(one.clone());
            }
        }
        let parsed: oci_client::Reference = r.parse().ok()?;
        let name = format!("{}/{}", parsed.registry(), parsed.repository());
        if let Some(d) = parsed.digest() {
            let want = format!("{name}@{d}");
            return images
                .values()
                .find(|i| i.repo_digests.contains(&want))
                .cloned();
        }
        let want = format!("{name}:{}", parsed.tag().unwrap_or("latest"));
        images
            .values()
            .find(|i| i.repo_tags.contains(&want))
            .cloned()
    }

    /// Removes the image `reference` names (all its tags); an unknown image
    /// is not an error. Returns whether one was removed. Its blobs and
    /// snapshots are collected once no other image uses them.
    pub async fn remove(&self, reference: &str) -> Result<bool, RemoveError> {
        let Some(image) = self.find(reference) else {
            check_reference(reference)?;
            return Ok(false);
        };
        if self.is_pinned(&image) {
            return Err(RemoveError::Pinned(reference.to_owned()));
        }
        {
            let mut images = lock(&self.inner.images);
            images.remove(&image.id);
            if let Ok(hex) = store::digest_hex(&image.id) {
                let path = self.inner.dir.join("index").join(format!("{hex}.json"));
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        images.insert(image.id.clone(), image.clone());
                        return Err(RemoveError::Index(e));
                    }
                    _ => {}
                }
            }
        }
        self.changed();
        tracing::info!(id = %image.id, tags = ?image.repo_tags, "image removed");
        self.collect_garbage_logged("image removed").await;
        Ok(true)
    }

    /// Collects garbage off the async threads and logs what went, with
    /// `why` it ran; a failure is logged, not returned.
    pub(crate) async fn collect_garbage_logged(&self, why: &'static str) {
        let this = self.clone();
        let gc = tokio::task::spawn_blocking(move || this.collect_garbage()).await;
        match gc {
            Ok(Ok((b, s))) => {
                tracing::info!(removed_blobs = b, removed_snapshots = s, why, "image GC")
            }
            Ok(Err(e)) => tracing::warn!(why, "image GC failed: {e}"),
            Err(e) => tracing::warn!(why, "image GC task failed: {e}"),
        }
    }

    /// Bytes and inodes used by the store: measured again only after the
    /// store changed (a pull committed, an image removed, garbage collected).
    pub async fn usage(&self) -> Result<FsUsage, FsInfoError> {
        let generation = self
            .inner
            .generation
            .load(std::sync::atomic::Ordering::SeqCst);
        if let Some((at, usage)) = *lock(&self.inner.usage)
            && at == generation
        {
            return Ok(usage);
        }
        let dir = self.inner.dir.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            snapshot::usage(&dir, &mut seen)
        })
        .await
        .map_err(|e| FsInfoError(self.inner.dir.clone(), std::io::Error::other(e)))?;
        let (bytes, inodes) = r.map_err(|e| FsInfoError(self.inner.dir.clone(), e))?;
        let usage = FsUsage { bytes, inodes };
        *lock(&self.inner.usage) = Some((generation, usage));
        Ok(usage)
    }

    /// Marks `keys` as in use by a pull until the guard drops.
    fn in_flight(&self, keys: Vec<String>) -> InFlight {
        let mut map = lock(&self.inner.in_flight);
        for k in &keys {
            *map.entry(k.clone()).or_insert(0) += 1;
        }
        InFlight {
            store: self.inner.clone(),
            keys,
        }
    }

    /// Removes blobs and snapshots no image references and no pull is using.
    /// Returns how many blobs and snapshots were removed.
    pub fn collect_garbage(&self) -> std::io::Result<(usize, usize)> {
        let tmp = self.inner.dir.join("tmp");
        let trash = tmp.join(format!("gc-{:016x}", rand::random::<u64>()));
        let (mut blobs, mut snaps) = (0, 0);
        {
            let images = lock(&self.inner.images);
            let in_flight = lock(&self.inner.in_flight);
            let mut keep: HashSet<&str> = in_flight.keys().map(String::as_str).collect();
            for img in images.values() {
                keep.extend(img.digests().map(String::as_str));
                keep.extend(img.chain_ids.iter().map(String::as_str));
            }
            let mut victims = Vec::new();
            for d in self.inner.content.list()? {
                if !keep.contains(d.as_str()) {
                    victims.push(self.inner.content.path(&d).map_err(std::io::Error::other)?);
                    blobs += 1;
                }
            }
            let snap_dir = self.inner.dir.join("snapshots");
            // A container's root filesystem may still use the snapshot of an
            // image that was removed: it stays until the container is gone.
            let mounted = snapshots_in_use(&snap_dir);
            for e in std::fs::read_dir(&snap_dir)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(format!("sha256:{name}").as_str()) && !mounted.contains(&name) {
                    victims.push(e.path());
                    snaps += 1;
                }
            }
            if !victims.is_empty() {
                std::fs::create_dir_all(&trash)?;
            }
            // Renames are quick: done under the locks, so no pull can start
            // using a victim in between.
            for (i, v) in victims.iter().enumerate() {
                std::fs::rename(v, trash.join(i.to_string()))?;
            }
        }
        if trash.exists() {
            std::fs::remove_dir_all(&trash)?;
        }
        self.changed();
        Ok((blobs, snaps))
    }

    /// Stores `image` (merging names into an existing record with the same
    /// ID) and moves its tags away from other images.
    fn commit(&self, mut image: Image) -> std::io::Result<Image> {
        let index = self.inner.dir.join("index");
        let mut images = lock(&self.inner.images);
        if let Some(old) = images.get(&image.id) {
            for t in &old.repo_tags {
                if !image.repo_tags.contains(t) {
                    image.repo_tags.push(t.clone());
                }
            }
            for t in &old.repo_digests {
                if !image.repo_digests.contains(t) {
                    image.repo_digests.push(t.clone());
                }
            }
        }
        let id = image.id.clone();
        let hex = store::digest_hex(&id)
            .map_err(std::io::Error::other)?
            .to_owned();
        write_atomic(
            &index,
            &format!("{hex}.json"),
            &serde_json::to_vec_pretty(&image)?,
        )?;
        images.insert(id.clone(), image.clone());
        self.changed();
        // Tags are unique: others lose the ones this image now carries.
        let mut changed = Vec::new();
        for other in images.values_mut().filter(|i| i.id != id) {
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !image.repo_tags.contains(t));
            if other.repo_tags.len() != before {
                changed.push(other.clone());
            }
        }
        for other in changed {
            let hex = store::digest_hex(&other.id).map_err(std::io::Error::other)?;
            write_atomic(
                &index,
                &format!("{hex}.json"),
                &serde_json::to_vec_pretty(&other)?,
            )?;
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_that_could_name_an_image() {
        let hex = "a".repeat(64);
        for ok in [
            "busybox",
            "docker.io/library/busybox:1.36",
            "127.0.0.1:5000/x/y@sha256:0123456789012345678901234567890123456789012345678901234567890123",
            &format!("sha256:{hex}"),
            "0123456789ab",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "Busy:Box",
            "foo::bar",
            "sha256:xyz",
            "a@sha256:12",
            "",
            "x y",
        ] {
            assert!(check_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn removing_an_absent_image_succeeds_a_malformed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), None).unwrap();
        assert!(!store.remove("docker.io/library/absent:1").await.unwrap());
        let err = store.remove("Not/A:Ref:At:All").await.unwrap_err();
        assert!(matches!(err, RemoveError::InvalidReference(_)), "{err}");
        assert!(err.to_string().contains("Not/A:Ref:At:All"), "{err}");
    }

    #[test]
    fn user_forms() {
        let mut img = Image {
            id: String::new(),
            repo_tags: vec![],
            repo_digests: vec![],
            size: 0,
            manifest: String::new(),
            index: None,
            layers: vec![],
            chain_ids: vec![],
            user: String::new(),
            updated: 0,
        };
        for (user, want) in [
            ("", (None, "")),
            ("1000", (Some(1000), "")),
            ("1000:1000", (Some(1000), "")),
            ("nobody", (None, "nobody")),
            ("nobody:nogroup", (None, "nobody")),
            ("0", (Some(0), "")),
        ] {
            img.user = user.into();
            let (uid, name) = img.user_id();
            assert_eq!((uid, name.as_str()), want, "{user}");
        }
    }
}
