//! Parsed files, re-read only when their stamp (mtime, size, inode, mode, owner) changes, so
//! a `docker login` done while credgate runs is seen on the next lookup.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::system::{FileStamp, Files};

pub struct FileCache<T> {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, Arc<T>)>>,
}

impl<T> FileCache<T> {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file, or `None` when it does not exist. `trust` sees the file's current
    /// stamp at every call, cached or not, and can refuse it; `parse` runs only when the file
    /// changed since the last call; `io_error` maps a failed stat or read.
    pub fn get<E>(
        &self,
        files: &dyn Files,
        trust: impl FnOnce(&FileStamp) -> Result<(), E>,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
        io_error: impl FnOnce(io::Error) -> E,
    ) -> Result<Option<Arc<T>>, E> {
        let stamp = match files.stamp(&self.path) {
            Ok(stamp) => stamp,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *self.cached.lock().unwrap() = None;
                return Ok(None);
            }
            Err(e) => return Err(io_error(e)),
        };
        trust(&stamp)?;
        if let Some((seen, value)) = &*self.cached.lock().unwrap() {
            if *seen == stamp {
                return Ok(Some(value.clone()));
            }
        }
        let bytes = match files.read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let value = Arc::new(parse(&bytes)?);
        *self.cached.lock().unwrap() = Some((stamp, value.clone()));
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::fake::MemoryFiles;

    #[test]
    fn rereads_only_after_a_change() {
        let files = MemoryFiles::new();
        let cache: FileCache<String> = FileCache::new("/c.json");
        let parse = |b: &[u8]| Ok::<_, io::Error>(String::from_utf8_lossy(b).into_owned());
        let get = || cache.get(&files, |_| Ok(()), parse, |e| e);
        assert!(get().unwrap().is_none());
        files.write("/c.json", "one", 0o600);
        assert_eq!(*get().unwrap().unwrap(), "one");
        assert_eq!(*get().unwrap().unwrap(), "one");
        assert_eq!(files.reads().len(), 1);
        files.write("/c.json", "two", 0o600);
        assert_eq!(*get().unwrap().unwrap(), "two");
        assert_eq!(files.reads().len(), 2);
    }

    #[test]
    fn trust_is_asked_at_every_call_even_when_cached() {
        let files = MemoryFiles::new();
        let cache: FileCache<String> = FileCache::new("/c.json");
        let parse = |b: &[u8]| Ok::<_, String>(String::from_utf8_lossy(b).into_owned());
        let root_only = |stamp: &FileStamp| match stamp.uid {
            0 => Ok(()),
            uid => Err(format!("owned by {uid}")),
        };
        files.write("/c.json", "one", 0o600);
        let get = || cache.get(&files, root_only, parse, |e| e.to_string());
        assert_eq!(*get().unwrap().unwrap(), "one");
        files.chown("/c.json", 4242);
        assert_eq!(get().unwrap_err(), "owned by 4242");
        files.chown("/c.json", 0);
        assert_eq!(*get().unwrap().unwrap(), "one");
    }
}
