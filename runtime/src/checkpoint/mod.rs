//! Container checkpoint archives, in the layout CRI-O writes and `checkpointctl`
//! and kubelet's checkpoint API expect.
//!
//! An archive is an uncompressed tar (mode 0600: it holds every memory page of the
//! container) with, at its top level:
//!
//! ```text
//! checkpoint/        CRIU's image files (inventory.img, pages-*.img, ...)
//! dump.log           CRIU's log of the dump
//! stats-dump         CRIU's statistics, when it wrote them
//! config.dump        JSON: id, name, image, runtime handler, created and checkpointed times
//! spec.dump          the container's OCI spec (config.json) as it runs, annotations included
//! bind.mounts        JSON: the spec's bind mounts and whether each source is a file or a directory
//! rootfs-diff.tar    the container's changes to its image (see [`rootfs_diff`])
//! deleted.files      JSON list of paths the container deleted from its image, when any
//! ```
//!
//! The spec's annotations are containerd's (`io.kubernetes.cri.container-name`,
//! `io.kubernetes.cri.sandbox-name`, `io.kubernetes.cri.sandbox-namespace`), which is
//! what `checkpointctl show` reads for an archive that is neither Podman's nor CRI-O's.

pub mod archive;
pub mod import;
pub mod metadata;
pub mod rootfs_diff;

/// CRIU's image directory in the work directory and the archive.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// CRIU's log of the dump.
pub const DUMP_LOG: &str = "dump.log";
/// CRIU's statistics of the dump.
pub const STATS_DUMP: &str = "stats-dump";
/// The container's metadata ([`metadata::ConfigDump`]).
pub const CONFIG_DUMP: &str = "config.dump";
/// The container's OCI spec.
pub const SPEC_DUMP: &str = "spec.dump";
/// The spec's bind mounts ([`metadata::BindMount`]).
pub const BIND_MOUNTS: &str = "bind.mounts";
/// The container's file system changes.
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// The paths the container deleted.
pub const DELETED_FILES: &str = "deleted.files";
/// CRIU's log of a restore, in the restore's work directory.
pub const RESTORE_LOG: &str = "restore.log";

/// What the archive holds, in order, of a work directory laid out like it.
pub const ARCHIVE_MEMBERS: [&str; 8] = [
    CHECKPOINT_DIR,
    DUMP_LOG,
    STATS_DUMP,
    CONFIG_DUMP,
    SPEC_DUMP,
    BIND_MOUNTS,
    ROOTFS_DIFF,
    DELETED_FILES,
];
