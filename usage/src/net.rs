//! Network interface counters in the form of `/proc/net/dev`.

use std::path::Path;

use crate::{InterfaceUsage, UsageError, read};

/// The counters of every interface but loopback in the `/proc/net/dev`
/// file at `path` (read it in the network namespace of interest).
pub fn read_net_dev(path: &Path) -> Result<Vec<InterfaceUsage>, UsageError> {
    parse_net_dev(path, &read(path)?)
}

fn parse_net_dev(path: &Path, text: &str) -> Result<Vec<InterfaceUsage>, UsageError> {
    let bad = |what: String| UsageError::Parse {
        path: path.to_owned(),
        what,
    };
    let mut out = Vec::new();
    // Two header lines, then `name: rx(bytes packets errs drop fifo frame
    // compressed multicast) tx(bytes packets errs drop fifo colls carrier compressed)`.
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            return Err(bad(format!("line {line:?} has no interface name")));
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|f| {
                f.parse()
                    .map_err(|_| bad(format!("{f:?} is not a counter")))
            })
            .collect::<Result<_, _>>()?;
        if fields.len() < 16 {
            return Err(bad(format!(
                "interface {name} has {} counters, not 16",
                fields.len()
            )));
        }
        out.push(InterfaceUsage {
            name: name.to_owned(),
            rx_bytes: fields[0],
            rx_errors: fields[2],
            tx_bytes: fields[8],
            tx_errors: fields[10],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0: 1234567    1000    3    0    0     0          0         0   765432     900    4    0    0     0       0          0
";

    #[test]
    fn counters_of_each_interface_but_loopback() {
        let got = parse_net_dev(Path::new("dev"), SAMPLE).unwrap();
        assert_eq!(
            got,
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 1_234_567,
                rx_errors: 3,
                tx_bytes: 765_432,
                tx_errors: 4,
            }]
        );
    }

    #[test]
    fn a_short_or_garbled_line_is_an_error() {
        let short = format!("{}\n{}\n  eth0: 1 2 3\n", "h1", "h2");
        assert!(parse_net_dev(Path::new("dev"), &short).is_err());
        let garbled = format!("h1\nh2\n  eth0: {}\n", ["x"; 16].join(" "));
        assert!(parse_net_dev(Path::new("dev"), &garbled).is_err());
    }

    #[test]
    fn this_hosts_counters_parse() {
        read_net_dev(Path::new("/proc/net/dev")).unwrap();
    }
}
