//! `crustd images import`: copies images from a running containerd straight into
//! crust's store under `root`, so a node switches from containerd to crust without
//! pulling anything again. It works on the store directly, so crustd must be stopped:
//! a running crustd holds the metadata database, and the import says so.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `crustd images import` arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// containerd's socket: unix:///run/containerd/containerd.sock.
    #[arg(long, value_name = "ENDPOINT")]
    pub from_containerd: String,
    /// The containerd namespace to read (its CRI plugin's is k8s.io).
    #[arg(long, default_value = "k8s.io")]
    pub namespace: String,
    /// Images to import, by their containerd name or any reference naming it
    /// [default: every image of the namespace].
    pub images: Vec<String>,
}

/// Opens the metadata store for the import, turning redb's refusal of a database
/// another process holds into what the user must do about it.
fn open_store(root: &Path) -> anyhow::Result<redb::Database> {
    let path = root.join(crate::DB_FILE);
    let db = match redb::Database::builder()
        .set_cache_size(crate::DB_CACHE_BYTES)
        .create(&path)
    {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
            "crustd is running on root {} ({} is in use): stop it (its containers keep \
             running) and import again",
            root.display(),
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("open metadata store {}", path.display())),
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(db)
}

/// Runs the import; the exit code is 1 when any image failed.
pub fn main(config: &Config, args: ImportArgs) -> anyhow::Result<i32> {
    crust_runtime::fsmode::set_daemon_umask();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crustd-import")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        // containerd first: an import that cannot read anything changes nothing here.
        let containerd = Arc::new(
            crust_image::Containerd::connect(&args.from_containerd, &args.namespace).await?,
        );
        let result = import(config, &containerd, &args).await;
        containerd.release().await;
        result
    })
}

async fn import(
    config: &Config,
    containerd: &Arc<crust_image::Containerd>,
    args: &ImportArgs,
) -> anyhow::Result<i32> {
    crust_runtime::fsmode::private_dir(&config.root, 0o700)
        .with_context(|| format!("create {}", config.root.display()))?;
    let root = config.root.clone();
    let db = Arc::new(tokio::task::spawn_blocking(move || open_store(&root)).await??);
    let images = {
        let (root, options) = (config.root.clone(), crate::registry_options(config));
        tokio::task::spawn_blocking(move || crust_image::ImageService::open(root, db, options))
            .await?
            .context("open the image store")?
    };
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            crate::server::shutdown_signal().await;
            cancel.cancel();
        });
    }
    let outcomes = images
        .import_from_containerd(containerd, &args.images, cancel)
        .await?;
    let mut failed = 0;
    for outcome in &outcomes {
        match outcome {
            Ok(o) if o.already_present => println!("{}: already present as {}", o.name, o.image.id),
            Ok(o) => println!(
                "{}: imported as {} ({} bytes of layers read)",
                o.name, o.image.id, o.bytes_read
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if outcomes.is_empty() {
        println!("no images in containerd namespace {}", args.namespace);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
