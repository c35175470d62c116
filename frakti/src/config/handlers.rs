//! The runtime handler table: `[runtime_handlers.<name>]` in the config
//! file. A `vm` handler is a VM profile of its own (kernel, initramfs,
//! machine, default size, overhead); a `host` handler is another name for
//! the host runtime. The default handler (`""`, alias `frakti`) is the
//! built-in VM profile made of the top-level keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hypervisor::Machine;
use serde::{Deserialize, Serialize};

use super::{ConfigError, MAX_VM_POOL, MIN_MEMORY_MIB, invalid};

/// One handler as the config file gives it (every key optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HandlerFile {
    kind: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    machine: Option<String>,
    cpu: Option<u32>,
    memory: Option<u64>,
    overhead_memory: Option<u64>,
    overhead_cpu: Option<u64>,
    vm_pool: Option<u32>,
}

/// What runs a handler's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// A VM per pod.
    Vm,
    /// Namespace containers on the host.
    Host,
}

/// A runtime handler of the table, its keys resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handler {
    /// `vm` or `host`.
    pub kind: HandlerKind,
    /// Guest kernel (vm).
    pub kernel: PathBuf,
    /// Guest initramfs (vm).
    pub initrd: PathBuf,
    /// Machine type (vm): `q35` or `microvm` (no hot-plug: no disks, no resize).
    #[serde(serialize_with = "machine_name")]
    pub machine: Machine,
    /// vCPUs of a pod without a CPU limit (vm).
    pub cpu: u32,
    /// Memory of a pod without a memory limit, MiB (vm).
    pub memory: u64,
    /// Host memory an idle pod costs beyond its guest RAM, MiB (the
    /// RuntimeClass's `overhead.podFixed`).
    pub overhead_memory: u64,
    /// Host CPU an idle pod costs, millicores (`overhead.podFixed`).
    pub overhead_cpu: u64,
    /// VMs booted ahead for this handler's pods (vm; none for host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_pool: Option<u32>,
}

fn machine_name<S: serde::Serializer>(m: &Machine, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

/// The defaults a handler's missing keys take: the top-level keys.
pub(super) struct Defaults<'a> {
    pub kernel: &'a PathBuf,
    pub initrd: &'a PathBuf,
    pub cpu: u32,
    pub memory: u64,
    pub vm_pool: u32,
    /// Handler names taken already (the default handler's, the host one's).
    pub reserved: [&'a str; 2],
}

/// Resolves the handler table.
pub(super) fn resolve(
    table: BTreeMap<String, HandlerFile>,
    defaults: &Defaults<'_>,
) -> Result<BTreeMap<String, Handler>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, file) in table {
        let bad = |message: String| invalid("runtime_handlers", format!("{name:?}: {message}"));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad(
                "a handler name is letters, digits, '-', '_' and '.' (a RuntimeClass handler)"
                    .into(),
            ));
        }
        if defaults.reserved.contains(&name.as_str()) {
            return Err(bad(
                "is the name of a built-in handler (the default VM one or host_handler)".into(),
            ));
        }
        let kind = match file.kind.as_deref() {
            None | Some("vm") => HandlerKind::Vm,
            Some("host") => HandlerKind::Host,
            Some(other) => return Err(bad(format!("kind {other:?} is neither vm nor host"))),
        };
        let machine = match &file.machine {
            None => Machine::Q35,
            Some(m) => m.parse().map_err(|e: String| bad(format!("machine {e}")))?,
        };
        let handler = Handler {
            kind,
            kernel: file.kernel.unwrap_or_else(|| defaults.kernel.clone()),
            initrd: file.initrd.unwrap_or_else(|| defaults.initrd.clone()),
            machine,
            cpu: file.cpu.unwrap_or(defaults.cpu),
            memory: file.memory.unwrap_or(defaults.memory),
            overhead_memory: file.overhead_memory.unwrap_or(0),
            overhead_cpu: file.overhead_cpu.unwrap_or(0),
            vm_pool: (kind == HandlerKind::Vm).then(|| file.vm_pool.unwrap_or(defaults.vm_pool)),
        };
        if kind == HandlerKind::Host && file.vm_pool.is_some() {
            return Err(bad("vm_pool is a key of vm handlers".into()));
        }
        if let Some(pool) = handler.vm_pool.filter(|p| *p > MAX_VM_POOL) {
            return Err(bad(format!(
                "vm_pool {pool} is more than {MAX_VM_POOL} VMs booted ahead"
            )));
        }
        if handler.cpu == 0 || handler.cpu > 255 {
            return Err(bad(format!("cpu {} is not between 1 and 255", handler.cpu)));
        }
        if handler.memory < MIN_MEMORY_MIB {
            return Err(bad(format!(
                "memory {} MiB is below the {MIN_MEMORY_MIB} MiB a guest needs",
                handler.memory
            )));
        }
        out.insert(name, handler);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults<'a>(kernel: &'a PathBuf, initrd: &'a PathBuf) -> Defaults<'a> {
        Defaults {
            kernel,
            initrd,
            cpu: 1,
            memory: 512,
            vm_pool: 1,
            reserved: ["frakti", "host"],
        }
    }

    fn parse(text: &str) -> BTreeMap<String, HandlerFile> {
        #[derive(Deserialize)]
        struct File {
            runtime_handlers: BTreeMap<String, HandlerFile>,
        }
        toml::from_str::<File>(text).unwrap().runtime_handlers
    }

    #[test]
    fn handlers_take_the_top_level_keys_they_do_not_set() {
        let (k, i) = (PathBuf::from("/g/vmlinux"), PathBuf::from("/g/initrd"));
        let table = parse(
            "[runtime_handlers.fast]\nmachine = \"microvm\"\nmemory = 256\noverhead_memory = 90\n\
             [runtime_handlers.runc]\nkind = \"host\"\n\
             [runtime_handlers.other]\nkernel = \"/k2\"\ncpu = 2\n",
        );
        let handlers = resolve(table, &defaults(&k, &i)).unwrap();
        let fast = &handlers["fast"];
        assert_eq!(fast.machine, Machine::Microvm);
        assert_eq!(
            (fast.kind, fast.cpu, fast.memory),
            (HandlerKind::Vm, 1, 256)
        );
        assert_eq!((&fast.kernel, &fast.initrd), (&k, &i));
        assert_eq!(fast.overhead_memory, 90);
        assert_eq!(handlers["runc"].kind, HandlerKind::Host);
        let other = &handlers["other"];
        assert_eq!(
            (other.kernel.as_path(), other.cpu),
            (std::path::Path::new("/k2"), 2)
        );
        assert_eq!(other.machine, Machine::Q35);
    }

    #[test]
    fn a_bad_handler_is_refused_by_name() {
        let (k, i) = (PathBuf::from("/k"), PathBuf::from("/i"));
        for (text, want) in [
            (
                "[runtime_handlers.x]\nkind = \"gvisor\"\n",
                "kind \"gvisor\"",
            ),
            ("[runtime_handlers.x]\nmachine = \"pc\"\n", "machine \"pc\""),
            ("[runtime_handlers.x]\ncpu = 0\n", "cpu 0"),
            ("[runtime_handlers.x]\nmemory = 16\n", "memory 16"),
            ("[runtime_handlers.frakti]\n", "built-in"),
            ("[runtime_handlers.host]\nkind = \"host\"\n", "built-in"),
            ("[runtime_handlers.\"a b\"]\n", "handler name"),
        ] {
            let err = resolve(parse(text), &defaults(&k, &i))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("runtime_handlers") && err.contains(want),
                "{text}: {err}"
            );
        }
        let unknown = toml::from_str::<BTreeMap<String, HandlerFile>>("x = { kernal = \"/k\" }");
        assert!(unknown.is_err(), "a misspelt key is an error");
    }
}
