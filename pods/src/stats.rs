//! Stats: what pods and containers use, measured by each pod's runtime in
//! one call per pod, with CPU rates computed between the last two samples
//! of the same pod or container.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use runtime_api::{
    ContainerRecord, ContainerUsage, LayerUsage, PodRuntime, PodUsage, RuntimeError, SandboxRecord,
    SandboxState, report,
};

use crate::filter::{ContainerFilter, SandboxFilter};
use crate::service::PodService;
use crate::table::{Lookup, lock, lookup_in};

/// The stats of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    /// The container's record (for its attributes).
    pub record: ContainerRecord,
    /// When it was measured, ns since the epoch.
    pub timestamp_ns: i64,
    /// What it uses; only the id when it could not be measured.
    pub usage: ContainerUsage,
    /// CPU rate since the previous sample, ns of CPU per second.
    pub nano_cores: Option<u64>,
}

/// The stats of one pod sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStats {
    /// The sandbox's record (for its attributes).
    pub sandbox: SandboxRecord,
    /// What it uses.
    pub usage: PodUsage,
    /// CPU rate of the whole pod since the previous sample.
    pub nano_cores: Option<u64>,
    /// Its containers.
    pub containers: Vec<ContainerStats>,
}

/// A stats call failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// No such container
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// No such pod sandbox
    #[error("pod sandbox {0:?} not found")]
    SandboxNotFound(String),
    /// The id prefix matches several containers or sandboxes
    #[error("id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a ready pod sandbox can be measured
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    /// The runtime could not measure the pod
    #[error("cannot measure pod sandbox {id}: {source}")]
    Runtime {
        /// Sandbox id.
        id: String,
        /// Why.
        #[source]
        source: RuntimeError,
    },
}

/// The last CPU sample of each pod and container: `(timestamp ns, CPU ns)`.
#[derive(Debug, Default)]
pub(crate) struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// The rate since the previous sample of `key`, and records this one.
    fn rate(&self, key: &str, timestamp_ns: i64, cpu_ns: u64) -> Option<u64> {
        let previous = lock(&self.0).insert(key.to_owned(), (timestamp_ns, cpu_ns));
        let (then, before) = previous?;
        let elapsed = u128::try_from(timestamp_ns.checked_sub(then)?)
            .ok()
            .filter(|e| *e > 0)?;
        let used = u128::from(cpu_ns.checked_sub(before)?);
        u64::try_from(used * 1_000_000_000 / elapsed).ok()
    }

    /// Forgets the samples of everything not in `live`.
    fn retain(&self, live: &HashSet<String>) {
        lock(&self.0).retain(|k, _| live.contains(k));
    }
}

fn container_key(id: &str) -> String {
    format!("c/{id}")
}

fn pod_key(id: &str) -> String {
    format!("p/{id}")
}

impl PodService {
    /// The stats of one container.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats, StatsError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(StatsError::ContainerNotFound(id.into())),
            Lookup::Ambiguous => return Err(StatsError::Ambiguous(id.into())),
        };
        let record = slot
            .get()
            .ok_or_else(|| StatsError::ContainerNotFound(id.clone()))?;
        let sandbox = self.sandbox_snapshot(&record.sandbox_id).await;
        let Some(sandbox) = sandbox.filter(|s| s.state == SandboxState::Ready) else {
            return Ok(self.unmeasured(record));
        };
        let runtime = self.runtime_for_stats(&sandbox)?;
        let pod = runtime
            .pod_stats(&sandbox, std::slice::from_ref(&record))
            .await
            .map_err(|source| StatsError::Runtime {
                id: sandbox.id.clone(),
                source,
            })?;
        Ok(self.container_figures(&pod, vec![record]).remove(0))
    }

    /// The stats of the containers that pass `filter`, one runtime call per
    /// pod; a pod that cannot be measured gives its containers without figures.
    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<ContainerStats> {
        let records = self.list_containers(filter);
        let mut by_pod: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
        for record in records {
            by_pod
                .entry(record.sandbox_id.clone())
                .or_default()
                .push(record);
        }
        let mut out = Vec::new();
        for (_, usage, records) in self.measure_pods(by_pod).await {
            match usage {
                Some(usage) => out.extend(self.container_figures(&usage, records)),
                None => out.extend(records.into_iter().map(|r| self.unmeasured(r))),
            }
        }
        self.forget_gone();
        out.sort_by(|a, b| {
            (a.record.created_at_ns, &a.record.id).cmp(&(b.record.created_at_ns, &b.record.id))
        });
        out
    }

    /// The stats of one ready pod sandbox and its containers.
    pub async fn pod_stats(&self, id: &str) -> Result<PodStats, StatsError> {
        let slot = match self.lookup(id) {
            Lookup::Found(_, slot) => slot,
            Lookup::Missing => return Err(StatsError::SandboxNotFound(id.into())),
            Lookup::Ambiguous => return Err(StatsError::Ambiguous(id.into())),
        };
        let sandbox = slot
            .lock()
            .await
            .clone()
            .ok_or_else(|| StatsError::SandboxNotFound(id.into()))?;
        if sandbox.state != SandboxState::Ready {
            return Err(StatsError::SandboxNotReady(sandbox.id));
        }
        let records = self.pod_records(&sandbox.id);
        let runtime = self.runtime_for_stats(&sandbox)?;
        let usage = runtime
            .pod_stats(&sandbox, &records)
            .await
            .map_err(|source| StatsError::Runtime {
                id: sandbox.id.clone(),
                source,
            })?;
        Ok(self.pod_figures(sandbox, usage, records))
    }

    /// The stats of the ready pod sandboxes that pass `filter`; a pod that
    /// cannot be measured is left out (and logged).
    pub async fn list_pod_stats(&self, filter: &SandboxFilter) -> Vec<PodStats> {
        let filter = SandboxFilter {
            state: Some(SandboxState::Ready),
            ..filter.clone()
        };
        let sandboxes = self.list(&filter).await;
        let by_pod = sandboxes
            .iter()
            .map(|s| (s.id.clone(), self.pod_records(&s.id)))
            .collect();
        let mut measured: HashMap<String, (PodUsage, Vec<ContainerRecord>)> = HashMap::new();
        for (pod, usage, records) in self.measure_pods(by_pod).await {
            if let Some(usage) = usage {
                measured.insert(pod, (usage, records));
            }
        }
        self.forget_gone();
        sandboxes
            .into_iter()
            .filter_map(|sandbox| {
                let (usage, records) = measured.remove(&sandbox.id)?;
                Some(self.pod_figures(sandbox, usage, records))
            })
            .collect()
    }

    /// Where each runtime keeps writable layers and what they use, one
    /// entry per directory; a runtime that cannot say is logged and left out.
    pub async fn container_filesystems(&self) -> Vec<LayerUsage> {
        let mut out: Vec<LayerUsage> = Vec::new();
        for runtime in self.registry.runtimes() {
            match runtime.writable_layers().await {
                Ok(layers) if out.iter().all(|l| l.mountpoint != layers.mountpoint) => {
                    out.push(layers);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    runtime = runtime.name(),
                    "cannot measure writable layers: {}",
                    report(&e)
                ),
            }
        }
        out
    }

    fn pod_records(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.list_containers(&ContainerFilter {
            sandbox_id: Some(sandbox_id.to_owned()),
            ..Default::default()
        })
        .into_iter()
        .filter(|r| r.sandbox_id == sandbox_id)
        .collect()
    }

    fn runtime_for_stats(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<Arc<dyn PodRuntime>, StatsError> {
        self.runtime_of(sandbox)
            .cloned()
            .map_err(|source| StatsError::Runtime {
                id: sandbox.id.clone(),
                source,
            })
    }

    /// Measures each pod of `by_pod` (concurrently), with the given
    /// containers; a pod not ready, or whose runtime fails, has no usage.
    async fn measure_pods(
        &self,
        by_pod: HashMap<String, Vec<ContainerRecord>>,
    ) -> Vec<(String, Option<PodUsage>, Vec<ContainerRecord>)> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        for (pod, records) in by_pod {
            let sandbox = self
                .sandbox_snapshot(&pod)
                .await
                .filter(|s| s.state == SandboxState::Ready);
            let runtime = sandbox
                .as_ref()
                .and_then(|s| self.runtime_of(s).ok().cloned());
            let (Some(sandbox), Some(runtime)) = (sandbox, runtime) else {
                out.push((pod, None, records));
                continue;
            };
            tasks.spawn(async move {
                let usage = runtime
                    .pod_stats(&sandbox, &records)
                    .await
                    .inspect_err(|e| {
                        tracing::warn!(sandbox = %pod, "cannot measure pod: {}", report(e));
                    })
                    .ok();
                (pod, usage, records)
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(result) => out.push(result),
                Err(e) => tracing::error!("a pod measurement task failed: {e}"),
            }
        }
        out
    }

    fn container_figures(
        &self,
        pod: &PodUsage,
        records: Vec<ContainerRecord>,
    ) -> Vec<ContainerStats> {
        records
            .into_iter()
            .map(|record| {
                let usage = pod
                    .containers
                    .iter()
                    .find(|c| c.id == record.id)
                    .cloned()
                    .unwrap_or_else(|| ContainerUsage {
                        id: record.id.clone(),
                        ..Default::default()
                    });
                let nano_cores = usage.cpu.and_then(|cpu| {
                    self.cpu_samples.rate(
                        &container_key(&record.id),
                        pod.timestamp_ns,
                        cpu.usage_core_ns,
                    )
                });
                ContainerStats {
                    record,
                    timestamp_ns: pod.timestamp_ns,
                    usage,
                    nano_cores,
                }
            })
            .collect()
    }

    fn pod_figures(
        &self,
        sandbox: SandboxRecord,
        usage: PodUsage,
        records: Vec<ContainerRecord>,
    ) -> PodStats {
        let containers = self.container_figures(&usage, records);
        let nano_cores = usage.cpu.and_then(|cpu| {
            self.cpu_samples
                .rate(&pod_key(&sandbox.id), usage.timestamp_ns, cpu.usage_core_ns)
        });
        PodStats {
            sandbox,
            usage,
            nano_cores,
            containers,
        }
    }

    /// A container whose pod cannot be measured: its attributes only.
    fn unmeasured(&self, record: ContainerRecord) -> ContainerStats {
        ContainerStats {
            usage: ContainerUsage {
                id: record.id.clone(),
                ..Default::default()
            },
            timestamp_ns: crate::table::now_ns(),
            nano_cores: None,
            record,
        }
    }

    /// Drops the CPU samples of pods and containers that no longer exist.
    fn forget_gone(&self) {
        let mut live: HashSet<String> = lock(&self.containers)
            .keys()
            .map(|id| container_key(id))
            .collect();
        live.extend(lock(&self.pods).keys().map(|id| pod_key(id)));
        self.cpu_samples.retain(&live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_cpu_time_over_wall_time_between_samples() {
        let samples = CpuSamples::default();
        assert_eq!(samples.rate("c", 1_000_000_000, 5_000_000_000), None);
        // Half a core for two seconds.
        assert_eq!(
            samples.rate("c", 3_000_000_000, 6_000_000_000),
            Some(500_000_000)
        );
        // Time that did not move, or a counter that went back, gives nothing.
        assert_eq!(samples.rate("c", 3_000_000_000, 7_000_000_000), None);
        assert_eq!(samples.rate("c", 4_000_000_000, 1), None);
        samples.retain(&HashSet::new());
        assert_eq!(samples.rate("c", 5_000_000_000, 2), None);
    }
}
