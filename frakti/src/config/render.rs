//! The configuration as a commented TOML file (`frakti config default` and
//! `config show`) and as the reference table of `docs/configuration.md`.
//! The help of each key is its flag's: one source for `--help`, the file
//! and the docs.

use clap::CommandFactory;

use super::{Cli, Config, FileConfig};

/// Keys of the config file that have no flag, with their help.
const FILE_ONLY: &[(&str, &str)] = &[
    (
        "qemu_firmware",
        "QEMU firmware ROM (qboot) the VMs boot from.",
    ),
    (
        "qemu_sandbox",
        "Confine QEMU with its seccomp sandbox (`-sandbox on`); false only for a QEMU built without it.",
    ),
    (
        "vm_user",
        "The unprivileged user QEMU runs as (its group, and `kvm` when the host has one); `root` keeps QEMU root.",
    ),
];

/// Keys whose default depends on the host or on where frakti is installed:
/// `config default` shows them commented out, with the value they take here.
const DERIVED: &[&str] = &[
    "max_cpu",
    "max_memory",
    "guest_kernel",
    "guest_initrd",
    "guest_modules",
    "host_monitor",
];

/// The flag arguments that are not configuration keys.
const NOT_KEYS: &[&str] = &["version", "config"];

/// One configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's name in the file.
    pub name: String,
    /// Its flag, if it has one.
    pub flag: Option<String>,
    /// One line of help.
    pub help: String,
}

/// Every key, in the order of `frakti --help` (file-only keys after `qemu`).
pub fn keys() -> Vec<Key> {
    let command = Cli::command();
    let mut keys = Vec::new();
    for arg in command.get_arguments() {
        let name = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_KEYS.contains(&name) {
            continue;
        }
        keys.push(Key {
            name: name.to_owned(),
            flag: Some(format!("--{long}")),
            help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
        });
        if name == "qemu" {
            keys.extend(FILE_ONLY.iter().map(|(name, help)| Key {
                name: (*name).to_owned(),
                flag: None,
                help: (*help).to_owned(),
            }));
        }
    }
    keys
}

/// The defaults: no file, no flags.
pub fn defaults() -> Config {
    let cli = Cli::parse_from_empty();
    // The defaults are valid by construction (a test holds them to it).
    Config::merge(&cli, FileConfig::default()).unwrap_or_else(|e| panic!("defaults: {e}"))
}

/// `config` as a TOML table.
fn table(config: &Config) -> toml::Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    }
}

/// The value of `name` in `config` as TOML; an unset optional key is `""`.
fn value(table: &toml::Table, name: &str) -> String {
    table
        .get(name)
        .map_or_else(|| "\"\"".to_owned(), toml::Value::to_string)
}

/// `config` as a config file. With `defaults`, the keys that depend on the
/// host or the install location are commented out, so that an installed
/// copy keeps following them.
pub fn render(config: &Config, defaults: bool) -> String {
    let table = table(config);
    let mut out = String::new();
    if defaults {
        out.push_str(
            "# frakti configuration: the defaults (`frakti config default`).\n\
             # Flags override these keys. A commented key depends on the host or on\n\
             # where frakti is installed; the value shown is what it takes here.\n",
        );
    } else {
        out.push_str(
            "# frakti configuration in effect (`frakti config show`): the defaults,\n\
             # the config file, then the flags.\n",
        );
    }
    for key in keys() {
        let comment = if defaults && DERIVED.contains(&key.name.as_str()) {
            "# "
        } else {
            ""
        };
        out.push_str(&format!(
            "\n# {}\n{comment}{} = {}\n",
            key.help,
            key.name,
            value(&table, &key.name)
        ));
    }
    out.push_str(&handler_tables(&table));
    out
}

/// The `[runtime_handlers.<name>]` tables, or a commented example of one.
fn handler_tables(table: &toml::Table) -> String {
    let mut out = String::from(
        "
# Runtime handlers (RunPodSandbox.runtime_handler, a RuntimeClass's handler),
         # one [runtime_handlers.<name>] table each: kind (vm or host), kernel, initrd,
         # machine (q35, or microvm: faster boot, no hot-plug), cpu, memory (MiB),
         # overhead_memory (MiB) and overhead_cpu (millicores); a key not set takes the
         # top-level one. The default handler (\"\", alias frakti) is the top-level keys.
",
    );
    match table
        .get("runtime_handlers")
        .and_then(toml::Value::as_table)
    {
        Some(handlers) if !handlers.is_empty() => {
            let mut wrapper = toml::Table::new();
            wrapper.insert(
                "runtime_handlers".into(),
                toml::Value::Table(handlers.clone()),
            );
            out.push_str(&toml::to_string(&wrapper).unwrap_or_default());
        }
        _ => out.push_str("# [runtime_handlers.fast]\n# machine = \"microvm\"\n"),
    }
    out
}

/// The reference table of every key, for `docs/configuration.md`.
#[cfg(test)]
fn reference() -> String {
    let table = table(&defaults());
    let mut out = String::from("| key | flag | default | meaning |\n|---|---|---|---|\n");
    for key in keys() {
        let default = if DERIVED.contains(&key.name.as_str()) {
            "depends on the host or the install".to_owned()
        } else {
            format!("`{}`", value(&table, &key.name))
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            key.name,
            key.flag
                .map_or_else(|| "—".to_owned(), |f| format!("`{f}`")),
            default.replace('|', "\\|"),
            key.help.replace('|', "\\|"),
        ));
    }
    out
}

impl Cli {
    /// The command line with no flags.
    fn parse_from_empty() -> Self {
        <Self as clap::Parser>::parse_from(["frakti"])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn reread(text: &str) -> Config {
        let file: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Config::merge(&Cli::parse_from_empty(), file).unwrap()
    }

    #[test]
    fn every_field_of_the_configuration_is_a_documented_key() {
        let fields: BTreeSet<String> = match serde_json::to_value(defaults()).unwrap() {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("{other}"),
        };
        let mut names: BTreeSet<String> = keys().into_iter().map(|k| k.name).collect();
        // The handler table has a section of its own.
        names.insert("runtime_handlers".into());
        assert_eq!(fields, names);
        for key in keys() {
            assert!(!key.help.is_empty(), "{} has no help", key.name);
            assert!(!key.help.contains('\n'), "{}: one line of help", key.name);
        }
    }

    #[test]
    fn the_defaults_read_back_unchanged() {
        let text = render(&defaults(), true);
        assert_eq!(reread(&text), defaults());
        assert!(text.contains("\n# max_cpu = "), "{text}");
        assert!(
            text.contains("\nlisten = \"/run/frakti/frakti.sock\"\n"),
            "{text}"
        );
        assert!(text.contains("\nmetrics_address = \"\"\n"), "{text}");
        let count = keys().len();
        let (keys_part, handlers) = text.split_once("\n# Runtime handlers").unwrap();
        assert_eq!(keys_part.matches(" = ").count(), count, "{text}");
        assert!(handlers.contains("\n# [runtime_handlers.fast]\n"), "{text}");
    }

    #[test]
    fn an_effective_configuration_reads_back_unchanged() {
        let cli = <Cli as clap::Parser>::parse_from([
            "frakti",
            "--cpu",
            "2",
            "--listen-group",
            "0",
            "--metrics-address",
            "127.0.0.1:9464",
            "--pinned-image",
            "registry.k8s.io/pause:3.10",
            "--cni-bin-dir",
            "/a,/b",
        ]);
        let file: FileConfig = toml::from_str(
            "accel = \"tcg\"\nqemu_sandbox = false\n\
             [runtime_handlers.fast]\nmachine = \"microvm\"\noverhead_memory = 90\n\
             [runtime_handlers.runc]\nkind = \"host\"\n",
        )
        .unwrap();
        let config = Config::merge(&cli, file).unwrap();
        let text = render(&config, false);
        assert!(
            !text.contains("\n# max_cpu"),
            "show writes every key: {text}"
        );
        assert_eq!(reread(&text), config);
        assert_eq!(config.runtime_handlers.len(), 2);
        assert!(text.contains("[runtime_handlers.fast]\n"), "{text}");
    }

    #[test]
    fn the_reference_in_the_docs_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let (begin, end) = ("<!-- keys: generated -->\n", "<!-- keys: end -->");
        let doc = std::fs::read_to_string(&path).unwrap();
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let want = reference();
        if std::env::var_os("FRAKTI_UPDATE_DOCS").is_some() {
            let updated = format!("{}{want}{}", &doc[..start], &doc[stop..]);
            std::fs::write(&path, updated).unwrap();
            return;
        }
        assert_eq!(
            doc[start..stop],
            want,
            "docs/configuration.md is stale: run FRAKTI_UPDATE_DOCS=1 cargo test -p frakti"
        );
    }
}
