//! One writer per run folder: an exclusive lock (`flock` on Unix, `LockFileEx` on Windows, through
//! `File::try_lock`) on `<run>/.lock` held for a training's
//! lifetime. The kernel drops it when the process ends, however it ends, so a lock left by a
//! killed process never blocks; the file keeps the holder's PID for the message a second
//! writer gets. Readers (`eval`, `reconstruct`, `encode`) do not lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Result, TrainError};

/// The lock of a run folder; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `run` (which must exist), or fails naming the holder's PID.
    pub fn acquire(run: &Path) -> Result<Self> {
        let path = run.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(TrainError::Locked {
                    run: run.to_path_buf(),
                    pid: pid.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            write!(f, "{}", std::process::id())?;
            f.flush()
        };
        write_pid(&mut file).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { _file: file })
    }
}
