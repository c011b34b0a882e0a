//! GPU memory on `/metrics`, read from NVML (the driver's management
//! library, loaded at start when the host has it) at each scrape.
//!
//! A worker's `cuda:K` is the K-th device CUDA shows it: with
//! `CUDA_VISIBLE_DEVICES` set, its K-th entry (an index or a `GPU-…` UUID;
//! MIG instances are not reported); without it, NVML's device K.

use nvml_wrapper::Nvml;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Where NVML finds a worker's CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlDevice {
    Index(u32),
    Uuid(String),
}

/// The NVML device behind CUDA device `k`, given `CUDA_VISIBLE_DEVICES`
/// (`visible`); `None` when it names one NVML cannot report alone (a MIG
/// instance) or has fewer than `k + 1` entries.
pub fn nvml_device(k: usize, visible: Option<&str>) -> Option<NvmlDevice> {
    let Some(visible) = visible else {
        return Some(NvmlDevice::Index(u32::try_from(k).ok()?));
    };
    // CUDA reads the list up to its first invalid entry.
    let entry = visible.split(',').map(str::trim).nth(k)?;
    if let Ok(i) = entry.parse::<u32>() {
        Some(NvmlDevice::Index(i))
    } else if entry.starts_with("GPU-") {
        Some(NvmlDevice::Uuid(entry.to_string()))
    } else {
        None
    }
}

/// The `device` label of a metric family (`cpu`, `cuda:K`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeviceLabel {
    pub device: String,
}

/// Bytes per device.
pub(crate) type Bytes = Family<DeviceLabel, Gauge<u64, std::sync::atomic::AtomicU64>>;

/// `kiln_worker_gpu_memory_used_bytes` and `…_total_bytes` per CUDA device.
#[derive(Debug)]
pub struct GpuMemory {
    nvml: Nvml,
    /// `(label, NVML device)` of each CUDA device the worker renders on.
    devices: Vec<(String, NvmlDevice)>,
}

impl GpuMemory {
    /// The collector for `devices`, or `None` when none is a CUDA device
    /// or NVML cannot be loaded (no driver): then no GPU memory is shown.
    pub fn new(devices: &[tch::Device]) -> Option<GpuMemory> {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let devices: Vec<(String, NvmlDevice)> = devices
            .iter()
            .filter_map(|d| match *d {
                tch::Device::Cuda(k) => Some((
                    crate::runtime::slots::device_label(*d),
                    nvml_device(k, visible.as_deref())?,
                )),
                _ => None,
            })
            .collect();
        if devices.is_empty() {
            return None;
        }
        // The driver installs the versioned name (nvml-wrapper's default);
        // the bare one comes with development packages.
        let nvml = Nvml::init().or_else(|_| {
            Nvml::builder()
                .lib_path(std::ffi::OsStr::new("libnvidia-ml.so"))
                .init()
        });
        match nvml {
            Ok(nvml) => Some(GpuMemory { nvml, devices }),
            Err(e) => {
                tracing::warn!(error = %e, "NVML is not available: /metrics shows no GPU memory");
                None
            }
        }
    }

    fn memory(&self, d: &NvmlDevice) -> Option<(u64, u64)> {
        let device = match d {
            NvmlDevice::Index(i) => self.nvml.device_by_index(*i),
            NvmlDevice::Uuid(u) => self.nvml.device_by_uuid(u.as_str()),
        }
        .ok()?;
        let m = device.memory_info().ok()?;
        Some((m.used, m.total))
    }
}

impl Collector for GpuMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let used = Bytes::default();
        let total = Bytes::default();
        for (label, d) in &self.devices {
            if let Some((u, t)) = self.memory(d) {
                let labels = DeviceLabel {
                    device: label.clone(),
                };
                used.get_or_create(&labels).set(u);
                total.get_or_create(&labels).set(t);
            }
        }
        used.encode(encoder.encode_descriptor(
            "kiln_worker_gpu_memory_used_bytes",
            "GPU memory in use on the device, by every process, as the driver reports it.",
            None,
            used.metric_type(),
        )?)?;
        total.encode(encoder.encode_descriptor(
            "kiln_worker_gpu_memory_total_bytes",
            "GPU memory the device has.",
            None,
            total.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_devices_map_to_nvml_through_cuda_visible_devices() {
        assert_eq!(nvml_device(1, None), Some(NvmlDevice::Index(1)));
        assert_eq!(nvml_device(0, Some("3,1")), Some(NvmlDevice::Index(3)));
        assert_eq!(nvml_device(1, Some("3, 1")), Some(NvmlDevice::Index(1)));
        assert_eq!(nvml_device(2, Some("3,1")), None);
        assert_eq!(
            nvml_device(0, Some("GPU-8f1c2d3e-0000-1111-2222-333344445555")),
            Some(NvmlDevice::Uuid(
                "GPU-8f1c2d3e-0000-1111-2222-333344445555".into()
            ))
        );
        assert_eq!(nvml_device(0, Some("MIG-1234")), None);
    }

    #[test]
    fn cpu_workers_have_no_gpu_collector() {
        assert!(GpuMemory::new(&[tch::Device::Cpu]).is_none());
    }
}
