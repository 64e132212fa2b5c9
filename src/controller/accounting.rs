//! What each request counts in the metrics, under Firecracker's names.

use super::Request;
use crate::config::{DeviceConfig, DeviceUpdate, SnapshotType};
use crate::metrics::{Counter, Gauge, METRICS};

/// The counter a request bumps, and the one it also bumps if it fails.
pub fn request_counters(request: &Request) -> Option<(&'static Counter, Option<&'static Counter>)> {
    let get = &METRICS.get_api_requests;
    let put = &METRICS.put_api_requests;
    let patch = &METRICS.patch_api_requests;
    let counters = match request {
        Request::GetInstanceInfo => (&get.instance_info_count, None),
        Request::GetVersion => (&get.vmm_version_count, None),
        Request::GetMachineConfig => (&get.machine_cfg_count, None),
        Request::GetMmds => (&get.mmds_count, None),
        Request::PutBootSource(_) => (&put.boot_source_count, Some(&put.boot_source_fails)),
        Request::PutMachineConfig(_) => (&put.machine_cfg_count, Some(&put.machine_cfg_fails)),
        Request::PatchMachineConfig(_) => {
            (&patch.machine_cfg_count, Some(&patch.machine_cfg_fails))
        }
        Request::PutDevice(DeviceConfig::Drive(_)) => (&put.drive_count, Some(&put.drive_fails)),
        Request::PutDevice(DeviceConfig::Net(_)) => (&put.network_count, Some(&put.network_fails)),
        Request::PutDevice(DeviceConfig::Vsock(_)) => (&put.vsock_count, Some(&put.vsock_fails)),
        Request::PutDevice(DeviceConfig::Entropy(_)) => {
            (&put.entropy_count, Some(&put.entropy_fails))
        }
        Request::PutDevice(DeviceConfig::Balloon(_)) => {
            (&put.balloon_count, Some(&put.balloon_fails))
        }
        Request::PatchBalloon(_) | Request::PatchBalloonStats(_) => {
            (&patch.balloon_count, Some(&patch.balloon_fails))
        }
        Request::UpdateDevice(DeviceUpdate::Drive(_)) => {
            (&patch.drive_count, Some(&patch.drive_fails))
        }
        Request::UpdateDevice(DeviceUpdate::Net(_)) => {
            (&patch.network_count, Some(&patch.network_fails))
        }
        Request::PutLogger(_) => (&put.logger_count, Some(&put.logger_fails)),
        Request::PutMmds(_) | Request::PutMmdsConfig(_) => (&put.mmds_count, Some(&put.mmds_fails)),
        Request::PatchMmds(_) => (&patch.mmds_count, Some(&patch.mmds_fails)),
        Request::PutMetrics(_) => (&put.metrics_count, Some(&put.metrics_fails)),
        Request::StartInstance | Request::SendCtrlAltDel | Request::FlushMetrics => {
            (&put.actions_count, Some(&put.actions_fails))
        }
        _ => return None,
    };
    Some(counters)
}

/// The latency a request's success records.
pub fn latency(request: &Request) -> Option<&'static Gauge> {
    let latencies = &METRICS.latencies_us;
    match request {
        Request::Pause => Some(&latencies.pause_vm),
        Request::Resume => Some(&latencies.resume_vm),
        Request::CreateSnapshot(p) if p.snapshot_type == SnapshotType::Diff => {
            Some(&latencies.diff_create_snapshot)
        }
        Request::CreateSnapshot(_) => Some(&latencies.full_create_snapshot),
        Request::LoadSnapshot(_) => Some(&latencies.load_snapshot),
        _ => None,
    }
}

/// Whether a request uses a field Firecracker deprecated.
pub fn uses_deprecated_fields(request: &Request) -> bool {
    match request {
        Request::LoadSnapshot(p) => p.mem_file_path.is_some() || p.enable_diff_snapshots,
        Request::PutDevice(DeviceConfig::Vsock(v)) => v.vsock_id.is_some(),
        _ => false,
    }
}
