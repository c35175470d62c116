//! The command lines of `frakti-monitor`, as typed structs.
//!
//! The daemon builds a command line with `to_args` (the subcommand's name
//! first, then its flags); the binary parses it with [`Command::parse`].
//!
//! ```text
//! frakti-monitor run    --id ID --root DIR --bundles DIR --socket PATH --exit-file PATH
//!                       [--log PATH] [--tty] [--stdin] [--stdin-once]
//! frakti-monitor exec   --id ID --root DIR --bundles DIR --report PATH
//!                       [--console-socket PATH] -- ARG...
//! frakti-monitor delete --id ID --root DIR --bundles DIR
//! frakti-monitor pidns  --file PATH
//!                       [--userns DIR --net PATH --uid-map MAP --gid-map MAP [--hostname NAME]]
//! ```
//!
//! A `MAP` is `container:host:length` ranges joined by commas.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// `run`: create a container and be its monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// The container's id (its libcontainer id).
    pub id: String,
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The directory of bundles; the spec is `<bundles>/<id>/config.json`.
    pub bundles: PathBuf,
    /// The monitor's unix socket.
    pub socket: PathBuf,
    /// Where the exit is written.
    pub exit_file: PathBuf,
    /// The CRI log file, if any.
    pub log: Option<PathBuf>,
    /// The container runs on a terminal (its spec says `terminal: true`).
    pub tty: bool,
    /// The container gets a stdin pipe (or terminal input) for attached clients.
    pub stdin: bool,
    /// The container's stdin closes when the first client attached with stdin lets go.
    pub stdin_once: bool,
}

impl RunArgs {
    /// The monitor's own log (its standard error, with libcontainer's
    /// errors), next to its socket.
    pub fn monitor_log(socket: &std::path::Path) -> PathBuf {
        socket.with_file_name("monitor.log")
    }
}

/// `exec`: run a process in a running container and report its exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    /// The container's id.
    pub id: String,
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The directory of bundles.
    pub bundles: PathBuf,
    /// Where the report is written.
    pub report: PathBuf,
    /// Run on a terminal whose master libcontainer sends to this socket.
    pub console_socket: Option<PathBuf>,
    /// The command and its arguments (not empty).
    pub args: Vec<String>,
}

/// `delete`: remove a container's remains (processes, state, cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteArgs {
    /// The container's id.
    pub id: String,
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The directory of bundles.
    pub bundles: PathBuf,
}

/// `pidns`: make a pod's PID namespace held by a tiny init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidnsArgs {
    /// The file the namespace is bind-mounted on (created).
    pub file: PathBuf,
    /// A user namespace of the pod's own, owning its other namespaces.
    pub userns: Option<UsernsArgs>,
}

/// A pod's user namespace, and the network, UTS and IPC namespaces it owns
/// (the PID namespace too), all held by the PID namespace's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernsArgs {
    /// The files `user`, `uts` and `ipc` are bind-mounted in this directory.
    pub dir: PathBuf,
    /// The file the network namespace is bind-mounted on.
    pub net: PathBuf,
    /// UID ranges, `container:host:length` joined by commas.
    pub uid_map: String,
    /// GID ranges, likewise.
    pub gid_map: String,
    /// The hostname set in the new UTS namespace, if any.
    pub hostname: Option<String>,
}

impl UsernsArgs {
    /// `map` (`container:host:length,...`) as the text of a `uid_map`.
    pub fn map_text(map: &str) -> Result<String, String> {
        let mut out = String::new();
        for range in map.split(',') {
            let fields: Vec<u32> = range
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("bad ID range {range:?}"))?;
            let [inside, outside, length] = fields[..] else {
                return Err(format!("bad ID range {range:?}"));
            };
            out.push_str(&format!("{inside} {outside} {length}\n"));
        }
        Ok(out)
    }
}

/// A parsed `frakti-monitor` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `run`.
    Run(RunArgs),
    /// `exec`.
    Exec(ExecArgs),
    /// `delete`.
    Delete(DeleteArgs),
    /// `pidns`.
    Pidns(PidnsArgs),
}

/// A command line is not one `frakti-monitor` understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// No subcommand was given
    #[error("no subcommand (run, exec, delete, pidns)")]
    NoCommand,
    /// The subcommand is unknown
    #[error("unknown subcommand {0:?}")]
    UnknownCommand(String),
    /// A flag is unknown to the subcommand
    #[error("unknown argument {0:?}")]
    Unknown(String),
    /// A flag was given twice
    #[error("{0} given twice")]
    Twice(String),
    /// A flag lacks its value
    #[error("{0} needs a value")]
    NoValue(String),
    /// A required flag is missing
    #[error("{0} is required")]
    Missing(&'static str),
    /// A value is not valid
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
}

fn push(out: &mut Vec<OsString>, flag: &str, value: impl AsRef<OsStr>) {
    out.push(flag.into());
    out.push(value.as_ref().to_owned());
}

fn push_if(out: &mut Vec<OsString>, flag: &str, on: bool) {
    if on {
        out.push(flag.into());
    }
}

impl RunArgs {
    /// The command line, `run` first.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = vec!["run".into()];
        push(&mut out, "--id", &self.id);
        push(&mut out, "--root", &self.root);
        push(&mut out, "--bundles", &self.bundles);
        push(&mut out, "--socket", &self.socket);
        push(&mut out, "--exit-file", &self.exit_file);
        if let Some(log) = &self.log {
            push(&mut out, "--log", log);
        }
        push_if(&mut out, "--tty", self.tty);
        push_if(&mut out, "--stdin", self.stdin);
        push_if(&mut out, "--stdin-once", self.stdin_once);
        out
    }
}

impl ExecArgs {
    /// The command line, `exec` first.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = vec!["exec".into()];
        push(&mut out, "--id", &self.id);
        push(&mut out, "--root", &self.root);
        push(&mut out, "--bundles", &self.bundles);
        push(&mut out, "--report", &self.report);
        if let Some(socket) = &self.console_socket {
            push(&mut out, "--console-socket", socket);
        }
        out.push("--".into());
        out.extend(self.args.iter().map(OsString::from));
        out
    }
}

impl DeleteArgs {
    /// The command line, `delete` first.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = vec!["delete".into()];
        push(&mut out, "--id", &self.id);
        push(&mut out, "--root", &self.root);
        push(&mut out, "--bundles", &self.bundles);
        out
    }
}

impl PidnsArgs {
    /// The command line, `pidns` first.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = vec!["pidns".into()];
        push(&mut out, "--file", &self.file);
        if let Some(u) = &self.userns {
            push(&mut out, "--userns", &u.dir);
            push(&mut out, "--net", &u.net);
            push(&mut out, "--uid-map", &u.uid_map);
            push(&mut out, "--gid-map", &u.gid_map);
            if let Some(h) = &u.hostname {
                push(&mut out, "--hostname", h);
            }
        }
        out
    }
}

/// Flags seen on a command line.
struct Flags {
    values: HashMap<&'static str, OsString>,
    switches: Vec<&'static str>,
    rest: Vec<OsString>,
}

impl Flags {
    /// Reads `args` against the flags a subcommand knows; with `rest`,
    /// everything after `--` is kept as is.
    fn read(
        args: impl Iterator<Item = OsString>,
        valued: &[&'static str],
        switches: &[&'static str],
        rest: bool,
    ) -> Result<Self, ArgsError> {
        let mut flags = Self {
            values: HashMap::new(),
            switches: Vec::new(),
            rest: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if rest && arg == "--" {
                flags.rest.extend(args);
                break;
            }
            let name = arg.to_string_lossy();
            if let Some(flag) = valued.iter().find(|f| **f == name) {
                let value = args
                    .next()
                    .ok_or_else(|| ArgsError::NoValue(name.to_string()))?;
                if flags.values.insert(flag, value).is_some() {
                    return Err(ArgsError::Twice(name.into_owned()));
                }
            } else if let Some(flag) = switches.iter().find(|f| **f == name) {
                if flags.switches.contains(flag) {
                    return Err(ArgsError::Twice(name.into_owned()));
                }
                flags.switches.push(flag);
            } else {
                return Err(ArgsError::Unknown(name.into_owned()));
            }
        }
        Ok(flags)
    }

    fn path(&mut self, flag: &'static str) -> Result<PathBuf, ArgsError> {
        self.optional_path(flag)?.ok_or(ArgsError::Missing(flag))
    }

    fn optional_path(&mut self, flag: &'static str) -> Result<Option<PathBuf>, ArgsError> {
        match self.values.remove(flag) {
            Some(v) if v.is_empty() => Err(ArgsError::Invalid(flag, "empty".into())),
            Some(v) => Ok(Some(v.into())),
            None => Ok(None),
        }
    }

    fn optional_text(&mut self, flag: &'static str) -> Result<Option<String>, ArgsError> {
        self.values
            .remove(flag)
            .map(|v| {
                v.into_string()
                    .map_err(|v| ArgsError::Invalid(flag, v.to_string_lossy().into_owned()))
            })
            .transpose()
    }

    fn text(&mut self, flag: &'static str) -> Result<String, ArgsError> {
        self.optional_text(flag)?.ok_or(ArgsError::Missing(flag))
    }

    fn id(&mut self) -> Result<String, ArgsError> {
        let id = self
            .values
            .remove("--id")
            .ok_or(ArgsError::Missing("--id"))?;
        let id = id
            .into_string()
            .map_err(|v| ArgsError::Invalid("--id", v.to_string_lossy().into_owned()))?;
        let valid = !id.is_empty()
            && id.len() <= 1024
            && id != "."
            && id != ".."
            && !id.contains(['/', '\0']);
        if !valid {
            return Err(ArgsError::Invalid("--id", id));
        }
        Ok(id)
    }

    fn switch(&self, flag: &str) -> bool {
        self.switches.contains(&flag)
    }
}

impl Command {
    /// Parses a command line without the program's name: the subcommand,
    /// then its flags.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, ArgsError> {
        let mut args = args.into_iter();
        let command = args.next().ok_or(ArgsError::NoCommand)?;
        match command.to_str() {
            Some("run") => {
                let mut f = Flags::read(
                    args,
                    &[
                        "--id",
                        "--root",
                        "--bundles",
                        "--socket",
                        "--exit-file",
                        "--log",
                    ],
                    &["--tty", "--stdin", "--stdin-once"],
                    false,
                )?;
                Ok(Self::Run(RunArgs {
                    id: f.id()?,
                    root: f.path("--root")?,
                    bundles: f.path("--bundles")?,
                    socket: f.path("--socket")?,
                    exit_file: f.path("--exit-file")?,
                    log: f.optional_path("--log")?,
                    tty: f.switch("--tty"),
                    stdin: f.switch("--stdin"),
                    stdin_once: f.switch("--stdin-once"),
                }))
            }
            Some("exec") => {
                let mut f = Flags::read(
                    args,
                    &[
                        "--id",
                        "--root",
                        "--bundles",
                        "--report",
                        "--console-socket",
                    ],
                    &[],
                    true,
                )?;
                let rest = std::mem::take(&mut f.rest);
                let args = rest
                    .into_iter()
                    .map(|a| {
                        a.into_string().map_err(|a| {
                            ArgsError::Invalid("argument", a.to_string_lossy().into_owned())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if args.is_empty() {
                    return Err(ArgsError::Missing("-- ARG..."));
                }
                Ok(Self::Exec(ExecArgs {
                    id: f.id()?,
                    root: f.path("--root")?,
                    bundles: f.path("--bundles")?,
                    report: f.path("--report")?,
                    console_socket: f.optional_path("--console-socket")?,
                    args,
                }))
            }
            Some("delete") => {
                let mut f = Flags::read(args, &["--id", "--root", "--bundles"], &[], false)?;
                Ok(Self::Delete(DeleteArgs {
                    id: f.id()?,
                    root: f.path("--root")?,
                    bundles: f.path("--bundles")?,
                }))
            }
            Some("pidns") => {
                let mut f = Flags::read(
                    args,
                    &[
                        "--file",
                        "--userns",
                        "--net",
                        "--uid-map",
                        "--gid-map",
                        "--hostname",
                    ],
                    &[],
                    false,
                )?;
                let file = f.path("--file")?;
                let userns = match f.optional_path("--userns")? {
                    None => None,
                    Some(dir) => Some(UsernsArgs {
                        dir,
                        net: f.path("--net")?,
                        uid_map: f.text("--uid-map")?,
                        gid_map: f.text("--gid-map")?,
                        hostname: f.optional_text("--hostname")?,
                    }),
                };
                Ok(Self::Pidns(PidnsArgs { file, userns }))
            }
            _ => Err(ArgsError::UnknownCommand(
                command.to_string_lossy().into_owned(),
            )),
        }
    }

    /// The command line, the subcommand first.
    pub fn to_args(&self) -> Vec<OsString> {
        match self {
            Self::Run(a) => a.to_args(),
            Self::Exec(a) => a.to_args(),
            Self::Delete(a) => a.to_args(),
            Self::Pidns(a) => a.to_args(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ArgsError> {
        Command::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn every_command_round_trips_through_its_command_line() {
        let odd_path = PathBuf::from(OsString::from_vec(b"/tmp/\xff dir/--tty".to_vec()));
        let commands = [
            Command::Run(RunArgs {
                id: "c1".into(),
                root: "/run/frakti/host".into(),
                bundles: "/run/frakti/bundles".into(),
                socket: "/run/frakti/c1/m.sock".into(),
                exit_file: "/run/frakti/c1/exit".into(),
                log: Some(odd_path.clone()),
                tty: true,
                stdin: true,
                stdin_once: true,
            }),
            Command::Run(RunArgs {
                id: "c2".into(),
                root: "r".into(),
                bundles: "b".into(),
                socket: "s".into(),
                exit_file: odd_path.clone(),
                log: None,
                tty: false,
                stdin: false,
                stdin_once: false,
            }),
            Command::Exec(ExecArgs {
                id: "c1".into(),
                root: "r".into(),
                bundles: "b".into(),
                report: odd_path.clone(),
                console_socket: Some("/run/x.sock".into()),
                args: vec!["sh".into(), "-c".into(), "--".into(), "--id".into()],
            }),
            Command::Exec(ExecArgs {
                id: "c1".into(),
                root: "r".into(),
                bundles: "b".into(),
                report: "rep".into(),
                console_socket: None,
                args: vec!["echo".into()],
            }),
            Command::Delete(DeleteArgs {
                id: "c3".into(),
                root: "r".into(),
                bundles: "b".into(),
            }),
            Command::Pidns(PidnsArgs {
                file: odd_path.clone(),
                userns: None,
            }),
            Command::Pidns(PidnsArgs {
                file: odd_path,
                userns: Some(UsernsArgs {
                    dir: "ns".into(),
                    net: "/run/netns/p".into(),
                    uid_map: "0:65536:65536".into(),
                    gid_map: "0:65536:1000,1000:5:1".into(),
                    hostname: Some("web".into()),
                }),
            }),
        ];
        for command in commands {
            let args = command.to_args();
            assert_eq!(Command::parse(args.clone()).unwrap(), command, "{args:?}");
        }
    }

    #[test]
    fn id_maps_read_as_kernel_text() {
        assert_eq!(
            UsernsArgs::map_text("0:65536:1000,1000:5:1").unwrap(),
            "0 65536 1000\n1000 5 1\n"
        );
        for bad in ["", "0:1", "0:1:2:3", "a:1:2", "0:1:2,"] {
            assert!(UsernsArgs::map_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let base = ["delete", "--id", "c", "--root", "r", "--bundles", "b"];
        assert!(parse(&base).is_ok());
        assert_eq!(parse(&[]), Err(ArgsError::NoCommand));
        assert!(matches!(
            parse(&["explode"]),
            Err(ArgsError::UnknownCommand(_))
        ));
        assert_eq!(parse(&base[..5]), Err(ArgsError::Missing("--bundles")));
        assert!(matches!(parse(&base[..6]), Err(ArgsError::NoValue(_))));
        let mut twice = base.to_vec();
        twice.extend(["--id", "d"]);
        assert!(matches!(parse(&twice), Err(ArgsError::Twice(_))));
        let mut unknown = base.to_vec();
        unknown.push("--tty");
        assert!(matches!(parse(&unknown), Err(ArgsError::Unknown(_))));
        for id in ["", ".", "..", "a/b", "a\0b"] {
            let mut bad = base.to_vec();
            bad[2] = id;
            assert!(
                matches!(parse(&bad), Err(ArgsError::Invalid("--id", _))),
                "{id:?}"
            );
        }
        let mut empty = base.to_vec();
        empty[4] = "";
        assert!(matches!(
            parse(&empty),
            Err(ArgsError::Invalid("--root", _))
        ));
        let exec = [
            "exec",
            "--id",
            "c",
            "--root",
            "r",
            "--bundles",
            "b",
            "--report",
            "p",
        ];
        assert_eq!(parse(&exec), Err(ArgsError::Missing("-- ARG...")));
        let mut no_args = exec.to_vec();
        no_args.push("--");
        assert_eq!(parse(&no_args), Err(ArgsError::Missing("-- ARG...")));
        let mut bad_arg: Vec<OsString> = no_args.iter().map(OsString::from).collect();
        bad_arg.push(OsString::from_vec(vec![0xff]));
        assert!(matches!(
            Command::parse(bad_arg),
            Err(ArgsError::Invalid("argument", _))
        ));
        assert!(matches!(
            parse(&["run", "--", "x"]),
            Err(ArgsError::Unknown(_))
        ));
    }
}
