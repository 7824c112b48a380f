//! Parsed files, re-read only when their stamp (mtime, size, inode, mode) changes, so a
//! `docker login` done while credgate runs is seen on the next lookup.

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

    /// The parsed file, or `None` when it does not exist. `parse` runs only when the file
    /// changed since the last call; `io_error` maps a failed stat or read.
    pub fn get<E>(
        &self,
        files: &dyn Files,
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
        assert!(cache.get(&files, parse, |e| e).unwrap().is_none());
        files.write("/c.json", "one", 0o600);
        assert_eq!(*cache.get(&files, parse, |e| e).unwrap().unwrap(), "one");
        assert_eq!(*cache.get(&files, parse, |e| e).unwrap().unwrap(), "one");
        assert_eq!(files.reads().len(), 1);
        files.write("/c.json", "two", 0o600);
        assert_eq!(*cache.get(&files, parse, |e| e).unwrap().unwrap(), "two");
        assert_eq!(files.reads().len(), 2);
    }
}
