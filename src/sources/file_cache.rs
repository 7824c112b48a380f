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

    /// The parsed file, or `None` when it does not exist. The file is opened once per call:
    /// `trust` sees that open file's stamp and where it really is (symlinks resolved), cached
    /// or not, and can refuse it; `parse` runs only when the file changed since the last call,
    /// on bytes read from the same open file; `io_error` maps a failed open, stat or read.
    pub fn get<E>(
        &self,
        files: &dyn Files,
        trust: impl FnOnce(&FileStamp, &Path) -> Result<(), E>,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
        io_error: impl Fn(io::Error) -> E,
    ) -> Result<Option<Arc<T>>, E> {
        let mut file = match files.open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                *self.cached.lock().unwrap() = None;
                return Ok(None);
            }
            Err(e) => return Err(io_error(e)),
        };
        let stamp = file.stamp().map_err(&io_error)?;
        let location = file.location().map_err(&io_error)?;
        trust(&stamp, &location)?;
        if let Some((seen, value)) = &*self.cached.lock().unwrap() {
            if *seen == stamp {
                return Ok(Some(value.clone()));
            }
        }
        let bytes = file.read_all().map_err(&io_error)?;
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
        let get = || cache.get(&files, |_, _| Ok(()), parse, |e| e);
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
        let root_only = |stamp: &FileStamp, _: &Path| match stamp.uid {
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

    #[test]
    fn a_file_swapped_after_its_check_is_not_read_under_the_checked_stamp() {
        let files = MemoryFiles::new();
        let cache: FileCache<String> = FileCache::new("/c.json");
        let parse = |b: &[u8]| Ok::<_, String>(String::from_utf8_lossy(b).into_owned());
        let root_only = |stamp: &FileStamp, _: &Path| match stamp.uid {
            0 => Ok(()),
            uid => Err(format!("owned by {uid}")),
        };
        let get = || cache.get(&files, root_only, parse, |e| e.to_string());
        files.write("/c.json", "root's", 0o600);
        files.swap_after_next_check("/c.json", "user's", 4242);
        // What was checked is what is read and cached: the swapped-in file is not.
        assert_eq!(*get().unwrap().unwrap(), "root's");
        assert_eq!(get().unwrap_err(), "owned by 4242");
    }

    #[test]
    fn trust_sees_where_a_symlinked_file_really_is() {
        let files = MemoryFiles::new();
        let cache: FileCache<String> = FileCache::new("/etc/c.json");
        let parse = |b: &[u8]| Ok::<_, io::Error>(String::from_utf8_lossy(b).into_owned());
        files.write("/srv/..2024_1/c.json", "one", 0o600);
        files.symlink("/srv/..data", "..2024_1");
        files.symlink("/etc/c.json", "/srv/..data/c.json");
        let seen = Mutex::new(Vec::new());
        let trust = |_: &FileStamp, at: &Path| {
            seen.lock().unwrap().push(at.to_path_buf());
            Ok(())
        };
        assert_eq!(
            *cache.get(&files, trust, parse, |e| e).unwrap().unwrap(),
            "one"
        );
        files.write("/srv/..2024_2/c.json", "two", 0o600);
        files.symlink("/srv/..data", "..2024_2");
        assert_eq!(
            *cache.get(&files, trust, parse, |e| e).unwrap().unwrap(),
            "two"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                PathBuf::from("/srv/..2024_1/c.json"),
                PathBuf::from("/srv/..2024_2/c.json")
            ]
        );
    }
}
