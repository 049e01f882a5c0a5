//! Private files: the client directory is 0700 and every file in it 0600, written atomically.
//!
//! A device's keys must not be readable by other local users (the default umask leaves files
//! 0644), and a crash must leave either the old or the new content of a file, never a torn one.

use crate::error::ClientError;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of the client directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ClientError + 'a {
    move |e| ClientError::State(format!("{what} {}: {e}", path.display()))
}

/// Creates `dir` (and its parents) with mode 0700, or narrows an existing one to it.
pub fn private_dir(dir: &Path) -> Result<(), ClientError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io("creating", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io("securing", dir))
}

/// Makes sure `path` exists with mode 0600 (creating it empty), so a library that creates the
/// file itself (SQLite) never creates it with the umask's mode.
pub fn private_file(path: &Path) -> Result<(), ClientError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE)).map_err(io("securing", path))
}

/// Writes `bytes` to `path` atomically (temp file, rename), mode 0600, and syncs the file and
/// its directory before returning: it survives power loss.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    // An older temp file may have been created with another mode.
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io("securing", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    sync_parent(path)
}

/// Removes `path` and syncs its directory, so the removal is durable before what depends on it.
pub fn remove_synced(path: &Path) -> Result<(), ClientError> {
    fs::remove_file(path).map_err(io("removing", path))?;
    sync_parent(path)
}

/// `fsync` of the directory holding `path`: makes a rename or removal in it durable.
fn sync_parent(path: &Path) -> Result<(), ClientError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directory_and_files_are_private_even_when_they_existed_wider() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("client");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);

        let f = dir.join("a");
        fs::write(&f, b"old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), FILE_MODE);
        assert_eq!(
            fs::read(&f).unwrap(),
            b"old",
            "an existing file keeps its content"
        );

        let g = dir.join("b.json");
        fs::write(g.with_extension("tmp"), b"stale").unwrap();
        fs::set_permissions(g.with_extension("tmp"), fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&g, b"new").unwrap();
        assert_eq!(fs::read(&g).unwrap(), b"new");
        assert_eq!(mode(&g), FILE_MODE);
        assert!(!g.with_extension("tmp").exists());
    }
}
