//! The guest's `modprobe`: serves the kernel's own module requests
//! (`request_module`: `rtnl-link-bridge` when a container creates a bridge,
//! `fs-xfs` at a mount, `nf_tables` for nft, ...) from the guest kernel's
//! full module tree. The tree reaches the guest as a read-only disk (serial
//! [`agent_api::MODULES_DISK_SERIAL`]) and is mounted at
//! `/lib/modules/<release>` on the first request, so neither the initramfs
//! nor the boot grows.
//!
//! The kernel runs `/sbin/modprobe -q -- <name>` (a link to the agent, see
//! [`install`]) and waits for it to exit: 0 when the module, its
//! dependencies and its `pre:` soft dependencies are loaded (or built in).
//! Only what is asked for is loaded.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MsFlags, mount};

/// Where the kernel runs its module helper (`/proc/sys/kernel/modprobe`).
pub const HELPER_PATH: &str = "/sbin/modprobe";
/// The agent itself, which the helper path links to.
const AGENT_PATH: &str = "/init";
/// Held while the module tree is being mounted.
const LOCK_PATH: &str = "/run/frakti-modprobe.lock";
/// How long the helper waits for the module disk to show up.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// A module request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModprobeError {
    /// The module tree is not available
    #[error("module tree {dir}: {why}")]
    Tree {
        /// Where the tree belongs.
        dir: PathBuf,
        /// Why it is not there.
        why: String,
    },
    /// No module answers to the name asked for
    #[error("module {0} not found")]
    NotFound(String),
    /// The kernel refused a module
    #[error("load {path}: {errno}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The kernel's answer.
        errno: nix::errno::Errno,
    },
    /// The command line is not one this helper serves
    #[error("{0}")]
    Usage(String),
}

/// Makes the agent the kernel's module helper: a link at [`HELPER_PATH`],
/// and the kernel told to run it.
pub fn install() {
    let _ = fs::create_dir_all("/sbin");
    let _ = fs::remove_file(HELPER_PATH);
    if let Err(e) = std::os::unix::fs::symlink(AGENT_PATH, HELPER_PATH) {
        tracing::warn!("cannot link {HELPER_PATH}: {e}");
        return;
    }
    if let Err(e) = fs::write("/proc/sys/kernel/modprobe", HELPER_PATH) {
        tracing::warn!("cannot set the kernel's module helper: {e}");
    }
}

/// Serves a module request when the agent runs under the name `modprobe`;
/// returns the exit code, or `None` when it was started as anything else.
pub fn run_if_invoked(args: &[OsString]) -> Option<i32> {
    let name = Path::new(args.first()?).file_name()?;
    if name != "modprobe" {
        return None;
    }
    let result = requests(&args[1..]).and_then(|names| probe(&tree_dir(), &names));
    Some(match result {
        Ok(loaded) => {
            if !loaded.is_empty() {
                kmsg(6, &format!("loaded {}", loaded.join(" ")));
            }
            0
        }
        Err(e) => {
            kmsg(3, &e.to_string());
            1
        }
    })
}

/// The module names of a `modprobe` command line (`-q`, `-b` and `-v` are
/// accepted and change nothing; everything after `--` is a name).
fn requests(args: &[OsString]) -> Result<Vec<String>, ModprobeError> {
    let mut names = Vec::new();
    let mut options = true;
    for arg in args {
        let arg = arg
            .to_str()
            .ok_or_else(|| ModprobeError::Usage(format!("argument {arg:?} is not UTF-8")))?;
        match arg {
            "--" if options => options = false,
            "-q" | "--quiet" | "-b" | "--use-blacklist" | "-v" | "--verbose" if options => {}
            a if options && a.starts_with('-') => {
                return Err(ModprobeError::Usage(format!("option {a} is not supported")));
            }
            a => names.push(a.to_owned()),
        }
    }
    if names.is_empty() {
        return Err(ModprobeError::Usage("no module named".into()));
    }
    Ok(names)
}

/// `/lib/modules/<running kernel's release>`.
fn tree_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Loads what `names` ask for; returns the modules loaded. A name that
/// several modules answer (an alias) is served when one of them loads: the
/// others may be for hardware this VM lacks (ENODEV).
fn probe(dir: &Path, names: &[String]) -> Result<Vec<String>, ModprobeError> {
    ensure_tree(dir)?;
    let index = ModuleIndex::load(dir).map_err(|e| ModprobeError::Tree {
        dir: dir.to_owned(),
        why: e.to_string(),
    })?;
    let mut loaded = Vec::new();
    for name in names {
        let mut first_error = None;
        let mut served = false;
        for module in index.resolve(name) {
            match load(&index, &module, &mut loaded) {
                Ok(()) => served = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !served {
            return Err(first_error.unwrap_or_else(|| ModprobeError::NotFound(name.clone())));
        }
    }
    Ok(loaded)
}

/// Loads `module` and what it depends on; a soft dependency that fails is
/// reported and passed over.
fn load(index: &ModuleIndex, module: &str, loaded: &mut Vec<String>) -> Result<(), ModprobeError> {
    for step in index.load_order(module)? {
        match insert(&step.path) {
            Ok(true) => loaded.push(module_name(&step.path.to_string_lossy())),
            Ok(false) => {}
            Err(e) if !step.required => kmsg(4, &format!("soft dependency of {module}: {e}")),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Loads the module at `path`; false when it was loaded already.
fn insert(path: &Path) -> Result<bool, ModprobeError> {
    let fail = |errno| ModprobeError::Load {
        path: path.to_owned(),
        errno,
    };
    let file = fs::File::open(path).map_err(|e| fail(nix::errno::Errno::from_raw(raw(&e))))?;
    match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(fail(e)),
    }
}

fn raw(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Mounts the module disk at `dir` unless the tree is there already.
fn ensure_tree(dir: &Path) -> Result<(), ModprobeError> {
    let present = || dir.join("modules.dep").is_file();
    if present() {
        return Ok(());
    }
    let fail = |why: String| ModprobeError::Tree {
        dir: dir.to_owned(),
        why,
    };
    let lock = fs::File::create(LOCK_PATH).map_err(|e| fail(format!("{LOCK_PATH}: {e}")))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(format!("lock {LOCK_PATH}: {e}")))?;
    if present() {
        return Ok(());
    }
    // The disk's driver and erofs are boot modules that may still wait to load.
    crate::init::load_boot_modules();
    let device =
        crate::disks::find_disk(agent_api::MODULES_DISK_SERIAL, DISK_WAIT).ok_or_else(|| {
            fail(format!(
                "no disk with serial {} within {DISK_WAIT:?}",
                agent_api::MODULES_DISK_SERIAL
            ))
        })?;
    fs::create_dir_all(dir).map_err(|e| fail(format!("create: {e}")))?;
    mount(
        Some(&device),
        dir,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| fail(format!("mount {}: {e}", device.display())))?;
    if present() {
        Ok(())
    } else {
        Err(fail("the disk holds no modules.dep".into()))
    }
}

/// Writes to the kernel log at `level` (the console's only reader of a helper).
fn kmsg(level: u8, message: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(f, "<{level}>frakti-modprobe: {message}");
    }
}

/// A module name as the kernel knows it: the file name without `.ko`, with
/// `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.strip_suffix(".ko").unwrap_or(file))
}

/// `-` as `_`, except inside `[...]` (as kmod compares names and aliases).
fn normalize(name: &str) -> String {
    let mut depth = 0;
    name.chars()
        .map(|c| match c {
            '[' => {
                depth += 1;
                c
            }
            ']' => {
                depth = 0;
                c
            }
            '-' if depth == 0 => '_',
            c => c,
        })
        .collect()
}

/// One module file to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The `.ko` file.
    pub path: PathBuf,
    /// The request fails if it does not load (false for soft dependencies).
    pub required: bool,
}

/// What `depmod` wrote about a module tree: files and dependencies, the
/// built-in modules, aliases and `pre:` soft dependencies.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name → its file (relative to `dir`) and its dependencies.
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    aliases: Vec<(glob::Pattern, String)>,
    pre: HashMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// Reads the index files of the tree at `dir` (`modules.dep` is required).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| fs::read_to_string(dir.join(name));
        let mut index = Self {
            dir: dir.to_owned(),
            ..Self::default()
        };
        for line in read("modules.dep")?.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .modules
                .insert(module_name(file), (file.trim().to_owned(), deps));
        }
        index.builtin = read("modules.builtin")
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        for line in read("modules.alias").unwrap_or_default().lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
                && let Ok(pattern) = glob::Pattern::new(&normalize(pattern))
            {
                index.aliases.push((pattern, normalize(module)));
            }
        }
        for line in read("modules.softdep").unwrap_or_default().lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let pre: Vec<String> = words
                .skip_while(|w| *w != "pre:")
                .skip(1)
                .take_while(|w| !w.ends_with(':'))
                .map(normalize)
                .collect();
            if !pre.is_empty() {
                index.pre.insert(normalize(module), pre);
            }
        }
        Ok(index)
    }

    /// The modules `request` names: itself when a module has that name, else
    /// every module with a matching alias (none when nothing answers).
    pub fn resolve(&self, request: &str) -> Vec<String> {
        let name = normalize(request);
        if self.modules.contains_key(&name) || self.builtin.contains(&name) {
            return vec![name];
        }
        let mut found: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if pattern.matches(&name) && !found.contains(module) {
                found.push(module.clone());
            }
        }
        found
    }

    /// The files to load for `module`, dependencies first; empty for a
    /// built-in module. Soft dependencies (and what they need) are not
    /// required.
    pub fn load_order(&self, module: &str) -> Result<Vec<Step>, ModprobeError> {
        let mut order = Vec::new();
        self.visit(module, false, &mut HashSet::new(), &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        module: &str,
        optional: bool,
        seen: &mut HashSet<String>,
        order: &mut Vec<Step>,
    ) -> Result<(), ModprobeError> {
        if !seen.insert(module.to_owned()) || self.builtin.contains(module) {
            return Ok(());
        }
        let Some((file, deps)) = self.modules.get(module) else {
            return if optional {
                Ok(())
            } else {
                Err(ModprobeError::NotFound(module.to_owned()))
            };
        };
        for soft in self.pre.get(module).into_iter().flatten() {
            for found in self.resolve(soft) {
                self.visit(&found, true, seen, order)?;
            }
        }
        // depmod lists the nearest dependencies first: load from the far end.
        for dep in deps.iter().rev() {
            self.visit(dep, optional, seen, order)?;
        }
        order.push(Step {
            path: self.dir.join(file),
            required: !optional,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
        write(
            "modules.dep",
            "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n\
             kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/802/mrp.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/mrp.ko:\n\
             kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
             kernel/fs/jbd2/jbd2.ko:\n\
             kernel/fs/mbcache.ko:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/drivers/net/dummy.ko:\n\
             kernel/crypto/md5.ko:\n\
             kernel/fs/nfsd/nfsd.ko:\n",
        );
        write("modules.builtin", "kernel/net/unix/unix.ko\n");
        write(
            "modules.alias",
            "# Aliases extracted from modules themselves.\n\
             alias rtnl-link-bridge bridge\n\
             alias fs-ext4 ext4\n\
             alias fs-ext3 ext4\n\
             alias net-pf-1 unix\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* dummy\n\
             alias crypto-md5 md5\n",
        );
        write(
            "modules.softdep",
            "# Soft dependencies extracted from modules themselves.\n\
             softdep ext4 pre: crc32c_generic missing_one post: nothing\n\
             softdep nfsd pre: crypto-md5\n\
             softdep cifs gcm\n",
        );
        dir
    }

    fn names(order: &[Step]) -> Vec<String> {
        order
            .iter()
            .map(|s| module_name(&s.path.to_string_lossy()))
            .collect()
    }

    #[test]
    fn aliases_and_names_resolve_as_kmod_does() {
        let dir = tree();
        let index = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(index.resolve("rtnl-link-bridge"), ["bridge"]);
        assert_eq!(index.resolve("rtnl_link_bridge"), ["bridge"]);
        assert_eq!(index.resolve("fs-ext4"), ["ext4"]);
        assert_eq!(index.resolve("8021q"), ["8021q"]);
        assert_eq!(index.resolve("net-pf-1"), ["unix"]);
        assert_eq!(
            index.resolve("pci:v00001AF4d00001000sv1sd2bc3sc4i5"),
            ["dummy"]
        );
        assert!(index.resolve("rtnl-link-nothing").is_empty());
    }

    #[test]
    fn dependencies_load_first_and_soft_ones_if_present() {
        let dir = tree();
        let index = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(
            names(&index.load_order("bridge").unwrap()),
            ["llc", "stp", "bridge"]
        );
        assert_eq!(
            names(&index.load_order("8021q").unwrap()),
            ["llc", "stp", "mrp", "garp", "8021q"]
        );
        let ext4 = index.load_order("ext4").unwrap();
        assert_eq!(names(&ext4), ["crc32c_generic", "mbcache", "jbd2", "ext4"]);
        let required: Vec<bool> = ext4.iter().map(|s| s.required).collect();
        assert_eq!(required, [false, true, true, true], "soft ones may fail");
        assert_eq!(names(&index.load_order("nfsd").unwrap()), ["md5", "nfsd"]);
        assert!(index.load_order("unix").unwrap().is_empty());
        assert!(matches!(
            index.load_order("nothing"),
            Err(ModprobeError::NotFound(n)) if n == "nothing"
        ));
        let order = index.load_order("llc").unwrap();
        assert_eq!(
            order,
            [Step {
                path: dir.path().join("kernel/net/llc/llc.ko"),
                required: true
            }]
        );
    }

    #[test]
    fn the_command_line_is_the_kernels() {
        let args = |a: &[&str]| -> Vec<OsString> { a.iter().map(OsString::from).collect() };
        assert_eq!(
            requests(&args(&["-q", "--", "rtnl-link-bridge"])).unwrap(),
            ["rtnl-link-bridge"]
        );
        assert_eq!(requests(&args(&["--", "-odd"])).unwrap(), ["-odd"]);
        assert!(matches!(
            requests(&args(&["-r", "bridge"])),
            Err(ModprobeError::Usage(m)) if m.contains("-r")
        ));
        assert!(matches!(
            requests(&args(&["-q"])),
            Err(ModprobeError::Usage(_))
        ));
        assert_eq!(
            run_if_invoked(&args(&["/init", "-q", "--", "x"])),
            None,
            "only the name modprobe makes a helper"
        );
    }
}
