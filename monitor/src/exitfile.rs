//! Files the monitor leaves for the daemon: a container's exit file
//! (`frakti-monitor run --exit-file`) and an exec's report
//! (`frakti-monitor exec --report`).
//!
//! Both are written atomically (a temporary file in the same directory, then
//! a rename), so a reader sees either nothing or the whole file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::Exit;

/// Largest file [`read`] and [`read_report`] accept.
const MAX_FILE: u64 = 64 * 1024;

/// How an exec ended, as `frakti-monitor exec` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExecReport {
    /// The process ran and ended.
    Exited {
        /// Its exit code; 128 + the signal's number when a signal killed it.
        exit_code: i32,
    },
    /// The process could not be started.
    Failed {
        /// Why.
        error: String,
        /// Because the container does not exist.
        #[serde(default)]
        not_found: bool,
    },
}

/// An exit file or exec report cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExitFileError {
    /// The file cannot be read
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file does not hold what it should
    #[error("{0} is malformed: {1}")]
    Malformed(PathBuf, String),
    /// The file cannot be written
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Reads a container's exit file; `None` when there is none (yet).
pub fn read(path: &Path) -> Result<Option<Exit>, ExitFileError> {
    read_json(path)
}

/// Writes a container's exit file atomically.
pub fn write(path: &Path, exit: &Exit) -> Result<(), ExitFileError> {
    write_atomic(path, &exit.to_json())
}

/// Reads an exec's report; `None` when there is none (yet).
pub fn read_report(path: &Path) -> Result<Option<ExecReport>, ExitFileError> {
    read_json(path)
}

/// Writes an exec's report atomically.
pub fn write_report(path: &Path, report: &ExecReport) -> Result<(), ExitFileError> {
    let json = serde_json::to_vec(report)
        .map_err(|e| ExitFileError::Write(path.to_owned(), std::io::Error::other(e)))?;
    write_atomic(path, &json)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ExitFileError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ExitFileError::Read(path.to_owned(), e)),
    };
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| ExitFileError::Read(path.to_owned(), e))?;
    if data.len() as u64 > MAX_FILE {
        return Err(ExitFileError::Malformed(
            path.to_owned(),
            format!("longer than {MAX_FILE} bytes"),
        ));
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| ExitFileError::Malformed(path.to_owned(), e.to_string()))
}

/// Writes `data` to a temporary file beside `path`, syncs it and renames it
/// over `path`.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ExitFileError> {
    let err = |e| ExitFileError::Write(path.to_owned(), e);
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_files_round_trip_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        assert!(read(&path).unwrap().is_none());
        let exit = Exit {
            exit_code: 3,
            finished_at_ns: 12,
            oom_killed: true,
        };
        write(&path, &exit).unwrap();
        assert_eq!(read(&path).unwrap(), Some(exit));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"exit_code":3,"finished_at_ns":12,"oom_killed":true}"#
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }

    #[test]
    fn malformed_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        for bad in [&b""[..], b"{", b"{\"exit_code\":\"x\"}", b"[]"] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(read(&path), Err(ExitFileError::Malformed(..))));
        }
        std::fs::write(&path, vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(matches!(read(&path), Err(ExitFileError::Malformed(..))));
        assert!(matches!(
            read(dir.path()),
            Err(ExitFileError::Read(..) | ExitFileError::Malformed(..))
        ));
        assert!(
            write(
                &dir.path().join("no/such/dir/exit"),
                &Exit {
                    exit_code: 0,
                    finished_at_ns: 0,
                    oom_killed: false
                }
            )
            .is_err()
        );
    }

    #[test]
    fn exec_reports_have_the_documented_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report");
        assert!(read_report(&path).unwrap().is_none());
        let exited = ExecReport::Exited { exit_code: 137 };
        write_report(&path, &exited).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"exit_code":137}"#
        );
        assert_eq!(read_report(&path).unwrap(), Some(exited));
        let failed = ExecReport::Failed {
            error: "container x not found".into(),
            not_found: true,
        };
        write_report(&path, &failed).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"error":"container x not found","not_found":true}"#
        );
        assert_eq!(read_report(&path).unwrap(), Some(failed));
        std::fs::write(&path, r#"{"error":"e"}"#).unwrap();
        assert_eq!(
            read_report(&path).unwrap(),
            Some(ExecReport::Failed {
                error: "e".into(),
                not_found: false
            })
        );
    }
}
