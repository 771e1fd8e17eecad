//! Reads of a local lake's Parquet files through memory maps.
//!
//! `object_store`'s `LocalFileSystem` answers every byte-range request of the Parquet reader
//! by allocating a fresh buffer, zeroing it and copying the range out of the page cache, on
//! a blocking-pool thread. For a scan of the whole `flows` table that is most of a
//! gigabyte per query: the kernel zeroing fresh pages and copying file data took about a
//! sixth of the CPU of `top_talkers` (docs/performance.md). [`MappedLocalStore`] serves the
//! ranges of `.parquet` files as slices of a memory map instead: no allocation, no copy,
//! and a map stays open for the next query.
//!
//! Why mapping is safe here: a Delta table never rewrites a data file. Writers add new
//! files (each name has a fresh UUID) and `vacuum` unlinks old ones, which leaves an
//! existing map readable. Each read still checks the file's identity (inode, size,
//! modification time) so a file replaced under the same name — a lake deleted and made
//! again while a server runs — is read anew, and a file gone is an error as it was. A file
//! truncated under a map by something outside Delta would make reads fault, so only data
//! files are mapped (`.parquet` outside `_delta_log`: the engine reads no other files, DDL
//! is refused) and `BULKHEAD_MAPPED_READS=0` turns mapping off. Everything else (the Delta
//! log, writes, listings) goes to `LocalFileSystem` unchanged.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// How many files stay mapped; the oldest map is dropped beyond it (reads in flight keep
/// their own reference). Maps cost address space and page-table entries, not memory.
const MAPPED_FILES: usize = 4096;

/// Whether the lake's Parquet files are read through memory maps
/// (`BULKHEAD_MAPPED_READS=0` turns it off).
pub fn enabled() -> bool {
    std::env::var("BULKHEAD_MAPPED_READS").map_or(true, |v| v != "0")
}

/// `LocalFileSystem` (rooted at `/`), with byte ranges of `.parquet` files served from
/// memory maps.
pub struct MappedLocalStore {
    local: LocalFileSystem,
    maps: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    by_path: HashMap<Path, MappedFile>,
    /// Insertion order, for dropping the oldest.
    order: VecDeque<Path>,
}

impl MappedLocalStore {
    pub fn new() -> Self {
        Self {
            local: LocalFileSystem::new(),
            maps: Mutex::new(Maps::default()),
        }
    }

    /// The whole file at `location` as one mapped buffer, or `None` for a file that is not
    /// mapped (not a data file, or empty: zero-length maps are refused by the kernel).
    fn mapped(&self, location: &Path) -> Result<Option<MappedFile>> {
        if location.extension() != Some("parquet")
            || location.parts().any(|part| part.as_ref() == "_delta_log")
        {
            return Ok(None);
        }
        let path = self.local.path_to_filesystem(location)?;
        let io_error = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => object_store::Error::NotFound {
                path: path.display().to_string(),
                source: source.into(),
            },
            _ => error(format!("{}: {source}", path.display())),
        };
        // One `stat` per read: the map is used only while the file is the one mapped.
        let current = object_meta(location, &std::fs::metadata(&path).map_err(io_error)?);
        if let Some(file) = self.lock().by_path.get(location)
            && file.meta.e_tag == current.e_tag
        {
            return Ok(Some(file.clone()));
        }
        let file = std::fs::File::open(&path).map_err(io_error)?;
        let metadata = file.metadata().map_err(io_error)?;
        if metadata.len() == 0 {
            return Ok(None);
        }
        // SAFETY: Delta data files are written once and never modified in place (module
        // doc); unlinking a mapped file keeps the map valid.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        let mapped = MappedFile {
            bytes: Bytes::from_owner(map),
            meta: object_meta(location, &metadata),
        };
        let mut maps = self.lock();
        if maps
            .by_path
            .insert(location.clone(), mapped.clone())
            .is_none()
        {
            maps.order.push_back(location.clone());
        }
        while maps.order.len() > MAPPED_FILES {
            if let Some(oldest) = maps.order.pop_front() {
                maps.by_path.remove(&oldest);
            }
        }
        Ok(Some(mapped))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the map consistent (inserts are single
        // calls), so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One mapped file and what `head` would say about it.
#[derive(Clone)]
struct MappedFile {
    bytes: Bytes,
    meta: ObjectMeta,
}

impl MappedFile {
    /// Bytes `range` of the file, or an error naming the file when it is outside.
    fn slice(&self, range: &Range<u64>) -> Result<Bytes> {
        let len = self.bytes.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(error(format!(
                "{}: range {}..{} is outside the file ({len} bytes)",
                self.meta.location, range.start, range.end
            )));
        }
        Ok(self.bytes.slice(range.start as usize..range.end as usize))
    }
}

fn error(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "MappedLocalStore",
        source: message.into(),
    }
}

/// The object metadata `LocalFileSystem` reports for a file (same e-tag scheme: inode,
/// modification time in microseconds, size), so that conditional reads agree with it.
fn object_meta(location: &Path, metadata: &std::fs::Metadata) -> ObjectMeta {
    let mtime = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
    let modified = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    ObjectMeta {
        location: location.clone(),
        last_modified: mtime.into(),
        size: metadata.len(),
        e_tag: Some(format!(
            "{inode:x}-{:x}-{:x}",
            modified.as_micros(),
            metadata.len()
        )),
        version: None,
    }
}

impl Default for MappedLocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MappedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedLocalStore").finish_non_exhaustive()
    }
}

impl fmt::Display for MappedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedLocalStore")
    }
}

#[async_trait]
impl ObjectStore for MappedLocalStore {
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.mapped(location)? {
            Some(file) => ranges.iter().map(|range| file.slice(range)).collect(),
            None => self.local.get_ranges(location, ranges).await,
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // The Parquet reader fetches single ranges (footers, lone column chunks) this way.
        let file = match options.head {
            true => None,
            false => self.mapped(location)?,
        };
        let Some(file) = file else {
            return self.local.get_opts(location, options).await;
        };
        options.check_preconditions(&file.meta)?;
        let range = match &options.range {
            Some(range) => range
                .as_range(file.meta.size)
                .map_err(|source| error(format!("{location}: {source}")))?,
            None => 0..file.meta.size,
        };
        let bytes = file.slice(&range)?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta: file.meta,
            range,
            attributes: Default::default(),
        })
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.local.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.local.put_multipart_opts(location, opts).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.local.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.local.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.local.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.local.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
#[expect(
    clippy::single_range_in_vec_init,
    reason = "get_ranges takes a list of ranges; these tests ask for one"
)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn parquet_ranges_come_from_the_map_and_equal_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("part-0.parquet"), &data).unwrap();
        std::fs::write(dir.path().join("log.json"), b"{}").unwrap();
        let store = MappedLocalStore::new();
        let file = Path::from_filesystem_path(dir.path().join("part-0.parquet")).unwrap();

        let ranges = [0..10, 4_096..70_000, 99_990..100_000];
        let got = store.get_ranges(&file, &ranges).await.unwrap();
        for (range, bytes) in ranges.iter().zip(&got) {
            assert_eq!(&bytes[..], &data[range.start as usize..range.end as usize]);
        }
        assert_eq!(store.lock().by_path.len(), 1, "the file is mapped once");
        let single = store.get_range(&file, 1_000..1_016).await.unwrap();
        assert_eq!(&single[..], &data[1_000..1_016]);
        let head = store.head(&file).await.unwrap();
        let matching = GetOptions {
            if_match: head.e_tag.clone(),
            ..Default::default()
        };
        let whole = store.get_opts(&file, matching).await.unwrap();
        assert_eq!(
            whole.meta, head,
            "the map reports what LocalFileSystem does"
        );
        assert_eq!(whole.bytes().await.unwrap().len(), data.len());
        let stale = GetOptions {
            if_match: Some("stale".into()),
            ..Default::default()
        };
        assert!(
            store.get_opts(&file, stale).await.is_err(),
            "preconditions are checked"
        );

        // Ranges handed out stay readable after vacuum unlinks the file; later reads see
        // what the file system has: a file made again under the same name is read anew,
        // a file gone is NotFound.
        std::fs::remove_file(dir.path().join("part-0.parquet")).unwrap();
        assert_eq!(&got[1][..], &data[4_096..70_000]);
        std::fs::write(dir.path().join("part-0.parquet"), b"PAR1 made again").unwrap();
        let again = store.get_ranges(&file, &[0..15]).await.unwrap();
        assert_eq!(&again[0][..], b"PAR1 made again");
        std::fs::remove_file(dir.path().join("part-0.parquet")).unwrap();
        let gone = store.get_ranges(&file, &[0..1]).await.unwrap_err();
        assert!(
            matches!(gone, object_store::Error::NotFound { .. }),
            "{gone}"
        );
        drop(got);

        let log = Path::from_filesystem_path(dir.path().join("log.json")).unwrap();
        let got = store.get_ranges(&log, &[0..2]).await.unwrap();
        assert_eq!(&got[0][..], b"{}");
        std::fs::create_dir(dir.path().join("_delta_log")).unwrap();
        std::fs::write(dir.path().join("_delta_log/1.checkpoint.parquet"), b"PAR1").unwrap();
        let checkpoint =
            Path::from_filesystem_path(dir.path().join("_delta_log/1.checkpoint.parquet")).unwrap();
        store.get_ranges(&checkpoint, &[0..4]).await.unwrap();
        assert_eq!(store.lock().by_path.len(), 1, "other files are not mapped");
    }

    #[tokio::test]
    async fn a_range_past_the_end_or_a_missing_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.parquet"), b"PAR1").unwrap();
        let store = MappedLocalStore::new();
        let short = Path::from_filesystem_path(dir.path().join("short.parquet")).unwrap();
        let err = store.get_ranges(&short, &[0..10]).await.unwrap_err();
        assert!(err.to_string().contains("short.parquet"), "{err}");
        assert!(err.to_string().contains("outside the file"), "{err}");

        let missing = Path::from(format!(
            "{}/missing.parquet",
            dir.path().display().to_string().trim_start_matches('/')
        ));
        let err = store.get_ranges(&missing, &[0..1]).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("missing.parquet"), "{err}");
    }
}
