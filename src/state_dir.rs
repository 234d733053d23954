//! The state directory is private to the service's user, whatever the umask.
//!
//! It holds the store (promotions, approvals, the audit log), the installation ID and the Git
//! cache (every fetched revision of a repository that may well be private). The directory is
//! made 0700 and every file the service creates in it 0600; the Git cache sits in a 0700
//! directory of its own, since gix writes its files with the umask's modes.
//!
//! An existing directory or file that group or others may read is tightened, with a warning,
//! rather than refused: a state directory made by an older version or by hand should not stop
//! the service. A directory the service does not own (a volume a kubelet set up) cannot be
//! changed; that is logged at error level and tolerated, because each file and directory
//! inside is private on its own.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The mode of the state directory and of the directories in it.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the files in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parent with mode 0700, or makes an existing `dir` 0700. A
/// shared directory such as /tmp is refused rather than changed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let existed = dir.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode == DIR_MODE {
        return Ok(());
    }
    // Tightening /tmp would break every other user of the host.
    if existed && mode & 0o1000 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a directory shared with other users (sticky bit, like /tmp); give the service a \
             directory of its own",
        ));
    }
    match fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)) {
        Ok(()) if existed => {
            tracing::warn!(
                directory = %dir.display(),
                mode = format!("{mode:04o}"),
                "others could read the state directory: made it 0700"
            );
            Ok(())
        }
        // Created just now, under a umask that took the owner's bits too.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::error!(
                directory = %dir.display(),
                mode = format!("{mode:04o}"),
                error = %e,
                "cannot make the state directory 0700 (it belongs to another user); its files \
                 and directories are private on their own"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Creates `file` empty with mode 0600 unless it exists, then [`restrict_file`]s it.
pub fn private_file(file: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(file)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    restrict_file(file)
}

/// Takes group's and others' permissions away from `file` if it has any (logged); a file that
/// does not exist is left so.
pub fn restrict_file(file: &Path) -> io::Result<()> {
    let mode = match fs::metadata(file) {
        Ok(metadata) => metadata.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(file, Permissions::from_mode(mode & 0o700))?;
    tracing::warn!(
        file = %file.display(),
        mode = format!("{mode:04o}"),
        "others could read a file of the state directory: took their permissions away"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path)
            .expect("the path exists")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_directory_open_to_others_is_made_0700_and_a_shared_one_is_refused() {
        let root = tempfile::tempdir().expect("temp dir");
        let new = root.path().join("a/b/state");
        private_dir(&new).expect("created");
        assert_eq!(mode(&new), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700, "parents too");

        let open = root.path().join("open");
        fs::create_dir(&open).expect("created");
        fs::set_permissions(&open, Permissions::from_mode(0o2775)).expect("chmod");
        private_dir(&open).expect("tightened");
        assert_eq!(mode(&open), 0o700);

        let shared = root.path().join("tmp");
        fs::create_dir(&shared).expect("created");
        fs::set_permissions(&shared, Permissions::from_mode(0o1777)).expect("chmod");
        let error = private_dir(&shared).expect_err("a shared directory");
        assert!(error.to_string().contains("sticky"), "{error}");
        assert_eq!(mode(&shared), 0o1777, "left as it was");
    }

    #[test]
    fn files_are_created_0600_and_others_lose_their_permissions_on_existing_ones() {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("db");
        private_file(&file).expect("created");
        assert_eq!(mode(&file), 0o600);
        fs::write(&file, "kept").expect("written");
        fs::set_permissions(&file, Permissions::from_mode(0o664)).expect("chmod");
        private_file(&file).expect("tightened");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            fs::read_to_string(&file).expect("read"),
            "kept",
            "not truncated"
        );

        let read_only = root.path().join("wal");
        fs::write(&read_only, "").expect("written");
        fs::set_permissions(&read_only, Permissions::from_mode(0o444)).expect("chmod");
        restrict_file(&read_only).expect("tightened");
        assert_eq!(
            mode(&read_only),
            0o400,
            "the owner's bits stay as they were"
        );
        restrict_file(&root.path().join("missing")).expect("nothing to do");
    }
}
