//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor metrics kubelet serves
//! on `/metrics/cadvisor` when it takes pod and container metrics from the runtime.
//! They are the stats of [`super::stats`], named and labelled the way cAdvisor does.

use crust_proto::cri;
use tonic::{Request, Response, Status};

use super::{Cri, stats};

const CONTAINER_LABELS: &[&str] = &["id", "name", "image"];
const NETWORK_LABELS: &[&str] = &["id", "name", "image", "interface"];

/// (name, help, label keys, type) of every metric crust reports.
const DESCRIPTORS: &[(&str, &str, &[&str], cri::MetricType)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        CONTAINER_LABELS,
        cri::MetricType::Counter,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        CONTAINER_LABELS,
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        CONTAINER_LABELS,
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_rss",
        "Size of RSS in bytes.",
        CONTAINER_LABELS,
        cri::MetricType::Gauge,
    ),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        CONTAINER_LABELS,
        cri::MetricType::Counter,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        CONTAINER_LABELS,
        cri::MetricType::Gauge,
    ),
    (
        "container_fs_inodes_total",
        "Number of inodes used by the container on this filesystem.",
        CONTAINER_LABELS,
        cri::MetricType::Gauge,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        NETWORK_LABELS,
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        NETWORK_LABELS,
        cri::MetricType::Counter,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        NETWORK_LABELS,
        cri::MetricType::Counter,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        NETWORK_LABELS,
        cri::MetricType::Counter,
    ),
];

fn metric(
    name: &str,
    timestamp: i64,
    labels: &[String],
    value: Option<u64>,
) -> Option<cri::Metric> {
    let (_, _, _, kind) = DESCRIPTORS.iter().find(|d| d.0 == name)?;
    Some(cri::Metric {
        name: name.to_string(),
        timestamp,
        metric_type: *kind as i32,
        label_values: labels.to_vec(),
        value: Some(cri::UInt64Value { value: value? }),
    })
}

fn v(x: &Option<cri::UInt64Value>) -> Option<u64> {
    x.as_ref().map(|u| u.value)
}

fn container_metrics(s: &cri::ContainerStats, image: &str) -> Vec<cri::Metric> {
    let attrs = s.attributes.clone().unwrap_or_default();
    let name = attrs.metadata.map(|m| m.name).unwrap_or_default();
    let labels = vec![attrs.id.clone(), name, image.to_string()];
    let mut out = Vec::new();
    if let Some(cpu) = &s.cpu {
        out.extend(metric(
            "container_cpu_usage_seconds_total",
            cpu.timestamp,
            &labels,
            v(&cpu.usage_core_nano_seconds).map(|n| n / 1_000_000_000),
        ));
    }
    if let Some(m) = &s.memory {
        out.extend(metric(
            "container_memory_usage_bytes",
            m.timestamp,
            &labels,
            v(&m.usage_bytes),
        ));
        out.extend(metric(
            "container_memory_working_set_bytes",
            m.timestamp,
            &labels,
            v(&m.working_set_bytes),
        ));
        out.extend(metric(
            "container_memory_rss",
            m.timestamp,
            &labels,
            v(&m.rss_bytes),
        ));
        out.extend(metric(
            "container_memory_failures_total",
            m.timestamp,
            &labels,
            v(&m.page_faults),
        ));
    }
    if let Some(fs) = &s.writable_layer {
        out.extend(metric(
            "container_fs_usage_bytes",
            fs.timestamp,
            &labels,
            v(&fs.used_bytes),
        ));
        out.extend(metric(
            "container_fs_inodes_total",
            fs.timestamp,
            &labels,
            v(&fs.inodes_used),
        ));
    }
    out
}

impl Cri {
    pub(super) async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        self.instrumented("ListMetricDescriptors", async {
            self.services()?;
            let descriptors = DESCRIPTORS
                .iter()
                .map(|(name, help, labels, _)| cri::MetricDescriptor {
                    name: name.to_string(),
                    help: help.to_string(),
                    label_keys: labels.iter().map(|l| l.to_string()).collect(),
                })
                .collect();
            Ok(cri::ListMetricDescriptorsResponse { descriptors })
        })
        .await
    }

    pub(super) async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        self.instrumented("ListPodSandboxMetrics", async {
            let services = self.services()?;
            let mut pod_metrics = Vec::new();
            for sandbox in services.sandboxes.list() {
                let pod = stats::pod_stats(&services, &sandbox);
                let linux = pod.linux.unwrap_or_default();
                let container_metrics = linux
                    .containers
                    .iter()
                    .map(|c| {
                        let id = c
                            .attributes
                            .as_ref()
                            .map(|a| a.id.clone())
                            .unwrap_or_default();
                        let image = services
                            .containers
                            .get(&id)
                            .map(|r| r.image_name.clone())
                            .unwrap_or_default();
                        cri::ContainerMetrics {
                            container_id: id,
                            metrics: container_metrics(c, &image),
                        }
                    })
                    .collect();
                let mut metrics = Vec::new();
                if let Some(net) = &linux.network {
                    let name = sandbox.metadata().name;
                    for iface in net.default_interface.iter().chain(net.interfaces.iter()) {
                        let labels = vec![
                            sandbox.id.clone(),
                            name.clone(),
                            String::new(),
                            iface.name.clone(),
                        ];
                        metrics.extend(metric(
                            "container_network_receive_bytes_total",
                            net.timestamp,
                            &labels,
                            v(&iface.rx_bytes),
                        ));
                        metrics.extend(metric(
                            "container_network_transmit_bytes_total",
                            net.timestamp,
                            &labels,
                            v(&iface.tx_bytes),
                        ));
                        metrics.extend(metric(
                            "container_network_receive_errors_total",
                            net.timestamp,
                            &labels,
                            v(&iface.rx_errors),
                        ));
                        metrics.extend(metric(
                            "container_network_transmit_errors_total",
                            net.timestamp,
                            &labels,
                            v(&iface.tx_errors),
                        ));
                    }
                }
                pod_metrics.push(cri::PodSandboxMetrics {
                    pod_sandbox_id: sandbox.id.clone(),
                    metrics,
                    container_metrics,
                });
            }
            Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
        })
        .await
    }
}
