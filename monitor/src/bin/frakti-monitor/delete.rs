//! `delete`: removes a container's remains.

use container::runner::Runner;
use monitor::args::DeleteArgs;

/// Kills what is left of the container and removes its libcontainer state,
/// cgroup and bundle; a container that is already gone is fine.
pub fn delete(args: &DeleteArgs) -> i32 {
    match Runner::new(&args.root, &args.bundles).delete(&args.id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("frakti-monitor delete: {e}");
            1
        }
    }
}
